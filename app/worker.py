"""The job worker process (`python -m app.cli worker`): runs batch jobs, serves no HTTP.

Two threads of its own: an asyncio loop holding what the web lifespan would (the database, the
model registry and the fleet that follows the desired model state), and the main thread running a
Huey consumer whose worker threads hand each job to that loop. SIGTERM: the running jobs finish
their chunk, go back to the queue (leased to nobody, enqueued again) and the process exits within
the grace period; a second SIGTERM ends it at once. SIGKILL: nothing runs, and the job's lease
expires, then another worker (or this one restarted) resumes it from its last chunk.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from concurrent.futures import Future
from typing import Any

import structlog

from app.core.config import Settings
from app.db.database import Database
from app.db.engine import create_engine
from app.db.migrations import upgrade_to_head
from app.http.state import registry_settings
from app.jobs.engine import JobEngine
from app.jobs.formats import load_readers
from app.jobs.runner import JobRunner, LoopHandler
from app.ml.registry import ModelRegistry
from app.observability.metrics import observe_model_batch
from app.services.model_fleet import ModelFleet

log = structlog.get_logger("app.worker")

# Rows per runtime call of a job here (the manifest's ceiling of `max_batch_size`): a worker serves
# no online request, so its jobs hand the runtime whole chunks, up to this (bench/analysis.md, jobs).
JOB_BATCH_ROWS = 4096
# The interpreter's switch interval here. A job's reading thread (parsing the next chunk) and the
# event loop (handing the chunk being scored to the model process, committing the one before)
# share the GIL; at Python's default of 5 ms the loop waited for it at each hand-over, and the
# model process idled: a 200,000-row forest job on two cores took 2.0-2.3 s at 5 ms, 1.6-1.8 s
# at 0.5 ms (bench/analysis.md, jobs). A web worker keeps the default.
SWITCH_INTERVAL_S = 0.0005


def worker_settings(settings: Settings) -> Settings:
    """The worker's settings: its model processes at nice 0 unless ML_PROCESS_WORKER_NICE is set.
    Nice 19 keeps a web worker's event loop ahead of its models; here the models are the work, and
    at nice 19 they starved beside the job's own parsing (bench/analysis.md, jobs)."""
    if "ml_process_worker_nice" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"ml_process_worker_nice": 0})


class WorkerLoop:
    """The worker's event loop, in a thread, and what it holds."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="jobs-loop", daemon=True)
        self.db = Database(create_engine(settings))
        self.registry = ModelRegistry(registry_settings(settings), on_batch=observe_model_batch)
        self.fleet = ModelFleet(self.db, self.registry, poll_interval_s=settings.model_state_poll_seconds)

    def call(self, work: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(work, self.loop)
        return future.result()

    def start(self, runner: JobRunner) -> None:
        self.thread.start()
        self.call(self._start(runner))

    async def _start(self, runner: JobRunner) -> None:
        if self.settings.migrate_on_startup:
            await upgrade_to_head(self.db.engine)
        if self.settings.ml_enabled:
            await self.fleet.start()
        load_readers()
        # Jobs orphaned by a worker that died are enqueued again at once, then every period.
        runner.start_upkeep()

    def close(self, runner: JobRunner) -> None:
        self.loop.call_soon_threadsafe(runner.stop)
        self.call(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    async def _close(self) -> None:
        await self.fleet.close()
        await self.registry.close()
        await self.db.dispose()


def run_worker(settings: Settings) -> int:
    settings = worker_settings(settings)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    engine = JobEngine(settings)
    worker = WorkerLoop(settings)

    async def enqueue(job_id: int) -> None:
        await asyncio.to_thread(engine.enqueue, job_id)

    runner = JobRunner(
        worker.db,
        worker.registry,
        settings,
        enqueue=enqueue,
        queue_depth=engine.pending,
        batch_rows=min(settings.jobs_chunk_rows, JOB_BATCH_ROWS),
    )
    worker.start(runner)
    engine.handler = LoopHandler(runner, worker.loop)
    consumer = engine.consumer(
        workers=settings.jobs_worker_threads, on_stop=runner.stopping.set, signals=True
    )
    consumer.shutdown_timeout = float(settings.timeout_graceful_shutdown)
    log.info(
        "worker_started",
        worker=runner.worker,
        threads=settings.jobs_worker_threads,
        database=worker.db.engine.url.get_backend_name(),
    )
    try:
        consumer.run()  # until SIGTERM or SIGINT
    finally:
        worker.close(runner)
        engine.close()
        log.info("worker_stopped", worker=runner.worker)
    return 0
