"""The job engine: one Huey instance from the settings, its tasks, and the consumer that runs them.

Storage follows DATABASE_URL: with SQLite, Huey's durable SqliteStorage in a queue file beside the
database (`data/app.jobs-queue.db` for `make run`: nothing else to start); with PostgreSQL, its
PostgresStorage in the same database (psycopg 3, LISTEN/NOTIFY wakes a waiting worker at once).
The task code is the same on both (docs/jobs.md has the comparison with the other engines).

A task only names a job: the job row (app.models.job) is the truth. Huey does not acknowledge a
task, so one dequeued by a worker that is then SIGKILLed is gone from the queue; the job it named
keeps its lease until the lease expires, then `maintain` (a periodic task) or any worker's reaper
enqueues it again. Two tasks for one job are harmless: only one worker can claim it.

Huey's tasks are synchronous, the service is async: `JobHandler` is what a task calls, given by
the process that consumes (the worker, or the web process in the embedded mode), which runs the
job on its own event loop (`asyncio.run_coroutine_threadsafe`).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, Protocol

from sqlalchemy.engine import make_url

from app.core.config import Settings

QUEUE_NAME = "jobs"


class JobHandler(Protocol):
    """What the engine's tasks call, in a Huey worker thread (each blocks until done)."""

    def run(self, job_id: int) -> None: ...

    def maintain(self) -> None: ...


def _huey() -> ModuleType:
    """Huey, imported when a process first needs it, without redis: Huey imports redis at import
    (for a Redis storage not used here) and redis 7 imports the OpenTelemetry SDK, which a web
    worker with tracing off must not load (tests/ops/test_tracing.py). Where redis is in use
    already (REDIS_URL), it is simply shared."""
    if "huey" in sys.modules:
        return sys.modules["huey"]
    blocked = "redis" not in sys.modules
    if blocked:
        sys.modules["redis"] = None  # type: ignore[assignment]  # import redis -> ImportError
    try:
        return importlib.import_module("huey")
    finally:
        if blocked:
            del sys.modules["redis"]


def queue_file(database_url: str) -> Path | None:
    """The SQLite queue file beside a SQLite database (None: PostgreSQL or in memory)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    db = Path(url.database)
    return db.with_name(f"{db.stem}.jobs-queue.db")


def _dsn(database_url: str) -> str:
    """libpq's form of a SQLAlchemy PostgreSQL URL (asyncpg's own query options dropped)."""
    url = make_url(database_url)
    query = {k: v for k, v in url.query.items() if k in {"sslmode", "sslrootcert", "application_name"}}
    return url.set(drivername="postgresql", query=query).render_as_string(hide_password=False)


def make_huey(settings: Settings) -> Any:
    """The Huey instance of DATABASE_URL. Its tables (or file) are made by `JobEngine.ready`, at
    first use, not here: a web process starts while the database is down (and answers 503)."""
    huey = _huey()
    url = settings.database_url
    options: dict[str, Any] = {"results": False, "utc": True}
    if make_url(url).get_backend_name() == "postgresql":
        return huey.PostgresHuey(QUEUE_NAME, dsn=_dsn(url), create_tables=False, **options)
    path = queue_file(url)
    if path is None:
        return huey.MemoryHuey(QUEUE_NAME, **options)  # an in-memory database: nothing outlives the process
    return huey.SqliteHuey(QUEUE_NAME, filename=str(path), timeout=30, create_tables=False, **options)


class JobEngine:
    """The Huey instance and its two tasks: `run_job` (one job) and `maintain` (every minute:
    re-enqueue orphaned jobs, delete those past retention)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.huey = make_huey(settings)
        self.handler: JobHandler | None = None
        self._schema_lock = threading.Lock()
        self._schema_made = isinstance(self.huey, _huey().MemoryHuey)

        def run_job(job_id: int) -> None:
            self._handler().run(job_id)

        def maintain() -> None:
            self._handler().maintain()

        self._run_job = self.huey.task(name="jobs.run")(run_job)
        self.huey.periodic_task(_huey().crontab(minute="*"), name="jobs.maintain")(maintain)

    def ready(self) -> None:
        """The queue's tables (PostgreSQL) or file (SQLite), made once, at first use. Blocking."""
        if self._schema_made:
            return
        with self._schema_lock:
            if not self._schema_made:
                path = queue_file(self.settings.database_url)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                self.huey.storage.initialize_schema()
                self._schema_made = True

    def _handler(self) -> JobHandler:
        if self.handler is None:
            raise RuntimeError("no job handler in this process: it only enqueues")
        return self.handler

    def enqueue(self, job_id: int) -> None:
        """Blocking (a write to the queue's storage): call it in a thread from async code."""
        self.ready()
        self._run_job(job_id)

    def pending(self) -> int:
        """Tasks waiting in the queue."""
        self.ready()
        return int(self.huey.pending_count())

    def consumer(self, *, workers: int, on_stop: Callable[[], None] | None = None, signals: bool) -> Any:
        """A consumer with `workers` threads. `signals`: the process's own (the worker process:
        SIGTERM stops it gracefully, `on_stop` first); else none are touched (the web process,
        where uvicorn owns them) and the owner stops it with `stop_consumer`."""
        self.ready()
        return _consumer_class()(
            self.huey,
            workers=workers,
            worker_type="thread",
            periodic=True,
            graceful_signal="TERM",
            check_worker_health=True,
            initial_delay=0.05,
            max_delay=1.0,
            on_stop=on_stop,
            signals=signals,
        )

    def close(self) -> None:
        self.huey.storage.close()


def _consumer_class() -> type:
    """Huey's consumer, with the process's signals left alone unless asked for (the web process:
    uvicorn owns them), and `on_stop` called first on SIGTERM or SIGINT (the worker process)."""
    base: type = importlib.import_module("huey.consumer").Consumer

    class JobConsumer(base):  # type: ignore[misc]  # huey has no type hints
        def __init__(
            self, *args: Any, on_stop: Callable[[], None] | None, signals: bool, **kwargs: Any
        ) -> None:
            super().__init__(*args, **kwargs)
            self.on_stop = on_stop
            self.signals = signals

        def _set_signal_handlers(self) -> None:
            if self.signals:
                super()._set_signal_handlers()

        def _handle_signal(self, signum: int, frame: FrameType | None) -> None:
            if self.on_stop is not None and signum in (signal.SIGTERM, signal.SIGINT):
                self.on_stop()
            super()._handle_signal(signum, frame)

    return JobConsumer


def stop_consumer(consumer: Any, timeout_s: float) -> None:
    """Stop a consumer started with `start()` (no signals): its threads finish their task first."""
    consumer.stop_flag.set()
    consumer.shutdown_timeout = timeout_s
    consumer._join_workers()
    logging.getLogger("huey.consumer").info("job consumer stopped")


class JobQueue:
    """A process's way to the engine from async code: `enqueue` a job; and, when this process
    runs jobs itself (the embedded worker), the consumer it started."""

    def __init__(self, engine: JobEngine) -> None:
        self.engine = engine
        self.consumer: Any = None

    async def enqueue(self, job_id: int) -> None:
        await asyncio.to_thread(self.engine.enqueue, job_id)

    def pending(self) -> int:
        return self.engine.pending()

    def start_consumer(self, handler: JobHandler, workers: int) -> None:
        self.engine.handler = handler
        self.consumer = self.engine.consumer(workers=workers, signals=False)
        self.consumer.start()

    async def close(self, timeout_s: float) -> None:
        if self.consumer is not None:
            await asyncio.to_thread(stop_consumer, self.consumer, timeout_s)
            self.consumer = None
        await asyncio.to_thread(self.engine.close)
