"""Running one job: claim it with a lease, read its input back from the database as a stream, score
it chunk by chunk through the model registry, and commit each chunk's results with the job's
progress and resume point in one transaction (exactly once: a chunk either is in the results and
counted, or neither, whatever kills the process).

Between chunks the runner checks that it still holds the job (a cancel, a reaped lease or a
hand-back ends its work there) and whether its process is stopping (SIGTERM: the job goes back to
the queue, leased to nobody, and is enqueued again for another worker). A job keeps the model
version it started with, even if an alias moves; if that version is unloaded under it, the job
fails with a problem naming the version.
"""

from __future__ import annotations

import asyncio
import bisect
import io
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from datetime import timedelta
from typing import IO, Any, BinaryIO, cast

import numpy as np
import structlog

from app.core.config import Settings
from app.db.database import Database
from app.jobs.formats import (
    JobFormat,
    JobInputError,
    RowChunk,
    encode_outputs,
    encode_results,
    iter_chunks,
)
from app.ml import errors as ml
from app.ml.fleet import VersionNotFound
from app.ml.predictions import ClassPrediction, to_predictions
from app.ml.registry import ModelRegistry, Served
from app.models.base import utcnow
from app.models.job import QUEUED, Job
from app.observability import metrics
from app.repositories.jobs import JobRepository

log = structlog.get_logger("app.jobs")

PROBLEM_BASE = "https://fastapi-ml-service.dev/problems/"
# Model errors that pass: the chunk is tried again after a pause (a queue full, a worker being
# replaced, a version still loading, a remote server down), up to this many times in a row.
TRANSIENT = (
    ml.ModelOverloaded,
    ml.PredictionTimeout,
    ml.ModelWorkerCrashed,
    ml.ModelsNotReady,
    ml.BackendUnavailable,
)
MAX_TRANSIENT_RETRIES = 20
# Batches of one chunk in the model's queue at once: enough to keep the runtime busy, few enough
# that online predictions sharing the model are not starved (its queue holds `max_queue`).
BATCHES_IN_FLIGHT = 8


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def problem(code: str, title: str, status: int, detail: str) -> dict[str, Any]:
    return {"type": PROBLEM_BASE + code, "title": title, "status": status, "detail": detail}


class JobFailed(Exception):
    def __init__(self, problem: dict[str, Any]) -> None:
        super().__init__(problem["detail"])
        self.problem = problem


class SegmentStream(io.RawIOBase):
    """A job's input segments read back as one seekable byte stream, a segment at a time (read in
    the runner's parsing thread, fetched on the event loop). The last two segments fetched are
    kept: a CSV chunk read again by csv.reader seeks back into the segment before the one its
    read-ahead reached, chunk after chunk."""

    def __init__(self, fetch: Callable[[int], bytes | None], sizes: list[int]) -> None:
        self._fetch = fetch
        self._starts = [0]
        for size in sizes:
            self._starts.append(self._starts[-1] + size)
        self._pos = 0
        self._kept: dict[int, bytes] = {}  # seq -> data, the last two fetched

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._starts[-1]}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self._starts[-1]:
            return 0
        seq = bisect.bisect_right(self._starts, self._pos) - 1
        data = self._kept.get(seq)
        if data is None:
            data = self._fetch(seq)
            if data is None:
                raise OSError(f"input segment {seq} is missing")
            if len(self._kept) >= 2:
                del self._kept[next(iter(self._kept))]
            self._kept[seq] = data
        offset = self._pos - self._starts[seq]
        n = min(len(buffer), len(data) - offset)
        buffer[:n] = memoryview(data)[offset : offset + n]
        self._pos += n
        return n


class JobRunner:
    """Runs jobs on the event loop it is used from, with `registry`'s models."""

    def __init__(
        self,
        db: Database,
        registry: ModelRegistry,
        settings: Settings,
        *,
        enqueue: Callable[[int], Awaitable[None]],
        queue_depth: Callable[[], int] = lambda: 0,
        worker: str | None = None,
        batch_rows: int | None = None,
    ) -> None:
        self.db = db
        # Rows per runtime call: None, the model's `max_batch_size` (the embedded worker shares the
        # model with online requests); a worker process, which serves nothing else, hands the
        # runtime up to a whole chunk at once (bench/analysis.md, jobs).
        self.batch_rows = batch_rows
        self.registry = registry
        self.settings = settings
        self.enqueue = enqueue
        self.queue_depth = queue_depth
        self.worker = worker or worker_name()
        # Set from a signal handler's thread (SIGTERM) or the lifespan's shutdown.
        self.stopping = threading.Event()
        self.running: set[int] = set()
        self._upkeep: asyncio.Task[None] | None = None

    def start_upkeep(self) -> None:
        """The reaper of this process (`upkeep_forever`), on the running loop."""
        self._upkeep = asyncio.get_running_loop().create_task(self.upkeep_forever())

    def stop(self) -> None:
        """From now on, running jobs hand their chunk back and no new one starts here."""
        self.stopping.set()
        if self._upkeep is not None:
            self._upkeep.cancel()

    def _lease(self) -> Any:
        return utcnow() + timedelta(seconds=self.settings.jobs_lease_seconds)

    # --- one job -----------------------------------------------------------------------------------

    async def run_job(self, job_id: int) -> None:
        with structlog.contextvars.bound_contextvars(job_id=job_id, worker=self.worker):
            if self.stopping.is_set():
                return  # the task is lost with this process; the reaper enqueues the job again
            async with self.db.session() as session:
                job = await JobRepository(session).claim(
                    job_id, self.worker, self._lease(), self.settings.jobs_max_running_per_user
                )
                await session.commit()
            if job is None:
                log.debug("job_not_claimed")
                return
            self.running.add(job_id)
            started = time.monotonic()
            try:
                outcome = await self._run(job, started)
            except JobFailed as failed:
                outcome = "failed"
                await self._fail(job, failed.problem, started)
            except Exception:
                # Not the job's fault (the database went away, a bug): the job keeps its lease,
                # which expires; then it is resumed from its last chunk.
                log.exception("job_interrupted")
                return
            finally:
                self.running.discard(job_id)
            elapsed = time.monotonic() - started
            if outcome in ("succeeded", "failed"):
                metrics.JOB_DURATION.labels(outcome).observe(elapsed)
                await self._next_of_owner(job.owner_id)
            log.info("job_ended", outcome=outcome, seconds=round(elapsed, 3))

    async def _run(self, job: Job, started: float) -> str:
        served = await self._served(job)
        spec = served.spec
        fmt = JobFormat(job.input_format)
        loop = asyncio.get_running_loop()
        sizes = await self._segment_sizes(job.id)

        def fetch(seq: int) -> bytes | None:
            return asyncio.run_coroutine_threadsafe(self._segment(job.id, seq), loop).result()

        stream: IO[bytes]
        if fmt is JobFormat.PARQUET:
            stream = await asyncio.to_thread(_spooled, SegmentStream(fetch, sizes))
        else:
            stream = io.BufferedReader(SegmentStream(fetch, sizes), buffer_size=1 << 20)
        # A pipeline of three: the next chunk is read (in a thread) and this one scored (in the
        # runtime's threads or processes) while the one before is packed and committed.
        reading: asyncio.Future[RowChunk | None] | None = None
        scoring: asyncio.Future[np.ndarray] | None = None
        scored: tuple[RowChunk, np.ndarray] | None = None  # its outputs back, not yet committed
        seq = job.next_chunk
        rows_done = job.rows_done
        try:
            chunks = iter_chunks(
                cast(BinaryIO, stream),
                fmt,
                spec.feature_names,
                chunk_rows=self.settings.jobs_chunk_rows,
                resume_from=job.resume,
            )
            reading = upcoming = asyncio.ensure_future(asyncio.to_thread(_next, chunks))
            while True:
                if self.stopping.is_set():
                    await self._keep(job, served, seq, scored)  # its work is done
                    return await self._hand_back(job)
                try:
                    chunk = await self._read(upcoming)
                except JobFailed:
                    await self._keep(job, served, seq, scored)  # the rows before the failure
                    raise
                reading = None
                if chunk is not None:
                    reading = upcoming = asyncio.ensure_future(asyncio.to_thread(_next, chunks))
                    scoring = asyncio.ensure_future(self._outputs(job, served, chunk.rows))
                if scored is not None:
                    if not await self._commit(job, served, seq, *scored):
                        return "released"  # cancelled, or reaped and resumed elsewhere
                    seq += 1
                    rows_done = scored[0].first_row + scored[0].n_rows
                    scored = None
                if chunk is None or scoring is None:
                    break
                scored = (chunk, await scoring)
                scoring = None
        finally:
            if scoring is not None:  # the commit before it failed or found the job gone
                scoring.cancel()
                await _settled(scoring)
            if reading is not None:  # its thread reads the stream: let it end before closing that
                await _settled(reading)
            stream.close()
        return await self._succeed(job, rows_done, started)

    async def _read(self, reading: Awaitable[RowChunk | None]) -> RowChunk | None:
        """The next chunk, or None at the input's end; a problem with the whole input, or more
        rows than JOBS_MAX_ROWS, fails the job."""
        try:
            chunk = await reading
        except JobInputError as exc:
            raise JobFailed(
                problem("invalid-job-input", "Invalid Job Input", 422, f"{exc.field}: {exc.detail}")
            ) from None
        most = self.settings.jobs_max_rows
        if chunk is not None and chunk.first_row + chunk.n_rows > most:
            raise JobFailed(
                problem(
                    "too-many-rows",
                    "Too Many Rows",
                    413,
                    f"The input has more than {most} rows (JOBS_MAX_ROWS).",
                )
            )
        return chunk

    async def _keep(
        self, job: Job, served: Served, seq: int, scored: tuple[RowChunk, np.ndarray] | None
    ) -> None:
        """Commit a chunk already scored, if there is one, before the job stops here."""
        if scored is not None:
            await self._commit(job, served, seq, *scored)

    async def _commit(self, job: Job, served: Served, seq: int, chunk: RowChunk, outputs: np.ndarray) -> bool:
        """The chunk's results packed (off the event loop: 17 ms per 8,192 rows) and committed with
        the job's progress, if the job is still this worker's (False: cancelled, or reaped)."""
        data = await asyncio.to_thread(_encoded, served, chunk, outputs)
        async with self.db.session() as session:
            held = await JobRepository(session).commit_chunk(
                job.id,
                self.worker,
                seq=seq,
                first_row=chunk.first_row,
                n_rows=chunk.n_rows,
                n_failed=len(chunk.errors),
                data=data,
                resume=chunk.resume,
                lease_until=self._lease(),
            )
            await session.commit()
        if not held:
            log.info("job_no_longer_held", chunk=seq)
            return False
        metrics.JOB_ROWS.labels(served.spec.name).inc(chunk.n_rows)
        log.debug("job_chunk_done", chunk=seq, rows_done=chunk.first_row + chunk.n_rows)
        return True

    async def _succeed(self, job: Job, rows_done: int, started: float) -> str:
        async with self.db.session() as session:
            repo = JobRepository(session)
            done = await repo.succeed(job.id, self.worker, rows_done)
            if done:
                await self._record(repo, job, "ok", rows_done, started)
            await session.commit()
        return "succeeded" if done else "released"

    async def _served(self, job: Job) -> Served:
        """The version serving the job: the one it started with, or (first start) the one its
        alias routes its owner to now, then recorded on the job."""
        try:
            if job.version is not None:
                return self.registry.resolve(job.model, job.version)
            served = self.registry.resolve(job.model, job.requested_version, job.owner_id)
        except VersionNotFound as exc:
            if job.version is not None:
                raise JobFailed(
                    problem(
                        "model-version-gone",
                        "Model Version Gone",
                        409,
                        f"Model {job.model!r} version {job.version!r}, which this job started with, "
                        "is no longer loaded; submit the job again.",
                    )
                ) from None
            raise JobFailed(
                problem(
                    "not-found",
                    "Not Found",
                    404,
                    f"Model {exc.model!r} has no version or alias {exc.ref!r}.",
                )
            ) from None
        except ml.ModelNotFound as exc:
            raise JobFailed(problem("not-found", "Not Found", 404, f"No model named {exc.name!r}.")) from None
        async with self.db.session() as session:
            await JobRepository(session).pin_version(job.id, self.worker, served.spec.version)
            await session.commit()
        job.version = served.spec.version
        return served

    async def _outputs(self, job: Job, served: Served, rows: np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.empty((0, 0))
        size = max(served.spec.max_batch_size, self.batch_rows or 0)
        gate = asyncio.Semaphore(BATCHES_IN_FLIGHT)

        async def batch(start: int) -> np.ndarray:
            async with gate:
                return await served.batcher.submit(rows[start : start + size])

        for attempt in range(MAX_TRANSIENT_RETRIES + 1):
            try:
                parts = await asyncio.gather(*(batch(i) for i in range(0, len(rows), size)))
                return np.concatenate(parts)
            except TRANSIENT as exc:
                if attempt == MAX_TRANSIENT_RETRIES or self.stopping.is_set():
                    raise JobFailed(
                        problem("model-unavailable", "Model Unavailable", 503, f"{type(exc).__name__}: {exc}")
                    ) from None
                await asyncio.sleep(min(0.05 * 2**attempt, 2.0))
                served = self._still(job, served)
            except ml.ModelError as exc:
                raise JobFailed(
                    problem("prediction-failed", "Prediction Failed", 500, f"The model failed: {exc}")
                ) from None
        raise AssertionError("unreachable")

    def _still(self, job: Job, served: Served) -> Served:
        """The job's version again, as the registry has it now (replaced after a crash)."""
        try:
            return self.registry.resolve(job.model, served.spec.version)
        except VersionNotFound:
            raise JobFailed(
                problem(
                    "model-version-gone",
                    "Model Version Gone",
                    409,
                    f"Model {job.model!r} version {served.spec.version!r}, which this job started "
                    "with, is no longer loaded; submit the job again.",
                )
            ) from None

    async def _hand_back(self, job: Job) -> str:
        async with self.db.session() as session:
            handed = await JobRepository(session).hand_back(job.id, self.worker)
            await session.commit()
        if handed:
            log.info("job_handed_back")
            await self.enqueue(job.id)
        return "handed-back"

    async def _fail(self, job: Job, failure: dict[str, Any], started: float) -> None:
        async with self.db.session() as session:
            repo = JobRepository(session)
            if await repo.fail(job.id, self.worker, failure):
                fresh = await repo.get(job.id, None)
                await self._record(repo, job, "job-failed", fresh.rows_done if fresh else 0, started)
            await session.commit()
        log.warning("job_failed", problem=failure["type"].rsplit("/", 1)[-1], detail=failure["detail"])

    async def _record(self, repo: JobRepository, job: Job, outcome: str, rows: int, started: float) -> None:
        """The job's one record in its owner's prediction history, written in the transaction that
        ends the job: a client that reads the job finished finds the record too."""
        await repo.record_prediction(
            user_id=job.owner_id,
            model=job.model,
            version=job.version or "",
            rows=rows,
            latency_ms=(time.monotonic() - started) * 1000,
            outcome=outcome,
        )

    async def _next_of_owner(self, owner_id: int) -> None:
        """A finished job frees a running place of its owner: enqueue their oldest queued job now,
        not at the next reap."""
        async with self.db.session(read_only=True) as session:
            waiting = await JobRepository(session).oldest_of_owner(owner_id, QUEUED)
        if waiting is not None:
            await self.enqueue(waiting)

    async def _segment_sizes(self, job_id: int) -> list[int]:
        async with self.db.session(read_only=True) as session:
            return await JobRepository(session).segment_sizes(job_id)

    async def _segment(self, job_id: int, seq: int) -> bytes | None:
        async with self.db.session(read_only=True) as session:
            return await JobRepository(session).segment(job_id, seq)

    # --- upkeep ------------------------------------------------------------------------------------

    async def reap(self) -> list[int]:
        """Enqueue again the jobs whose lease expired (their worker died) and queued ones waiting
        longer than a reap period (their task lost, or their owner's running limit was full)."""
        before = utcnow() - timedelta(seconds=self.settings.jobs_reap_seconds)
        async with self.db.session() as session:
            repo = JobRepository(session)
            ids = await repo.to_requeue(before)
            await repo.touch(ids)
            await session.commit()
        for job_id in ids:
            await self.enqueue(job_id)
        if ids:
            log.info("jobs_requeued", jobs=ids)
        return ids

    async def clean(self) -> int:
        """Delete finished jobs past retention (and uploads abandoned for a day)."""
        now = utcnow()
        async with self.db.session() as session:
            repo = JobRepository(session)
            ids = await repo.expired(
                now - timedelta(days=self.settings.jobs_retention_days), now - timedelta(days=1)
            )
            for job_id in ids:
                await repo.delete(job_id)
            await session.commit()
        if ids:
            log.info("jobs_deleted_after_retention", jobs=len(ids))
        return len(ids)

    async def sample(self) -> None:
        async with self.db.session(read_only=True) as session:
            repo = JobRepository(session)
            counts = await repo.counts_by_state()
            oldest = await repo.oldest_queued()
        depth = await asyncio.to_thread(self.queue_depth)
        age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        metrics.observe_job_states(counts, depth, max(age, 0.0))

    async def maintain(self) -> None:
        await self.reap()
        await self.clean()
        await self.sample()

    async def upkeep_forever(self) -> None:
        """The reaper of this process, every `jobs_reap_seconds` (the engine's periodic task runs
        every minute too): a job orphaned by a killed worker resumes within a lease and a period."""
        while True:
            try:
                await self.reap()
                await self.sample()
            except Exception:
                log.exception("jobs_upkeep_failed")
            await asyncio.sleep(self.settings.jobs_reap_seconds)


class LoopHandler:
    """What the engine's tasks call (app.jobs.engine.JobHandler): the runner's coroutines, run on
    `loop` from a Huey worker thread, which waits for them."""

    def __init__(self, runner: JobRunner, loop: asyncio.AbstractEventLoop) -> None:
        self.runner = runner
        self.loop = loop

    def _wait(self, work: Awaitable[Any]) -> None:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(_awaited(work), self.loop)
        future.result()

    def run(self, job_id: int) -> None:
        self._wait(self.runner.run_job(job_id))

    def maintain(self) -> None:
        self._wait(self.runner.maintain())


async def _settled(future: asyncio.Future[Any]) -> None:
    """Wait for `future` to end, its outcome read (so it is not reported as never retrieved)."""
    await asyncio.wait([future])
    if not future.cancelled():
        future.exception()


async def _awaited(work: Awaitable[Any]) -> Any:
    return await work


def _next(chunks: Iterator[RowChunk]) -> RowChunk | None:
    return next(chunks, None)


def _encoded(served: Served, chunk: RowChunk, outputs: np.ndarray) -> bytes:
    """The chunk's stored results: one result row per input row, in order. Packed from the
    outputs' arrays where it can be (a job's hot path); else a row at a time."""
    spec = served.spec
    packed = encode_outputs(chunk, None if spec.task == "regression" else spec.labels, outputs)
    if packed is not None:
        return packed
    predictions = to_predictions(served.spec, outputs) if len(chunk.good) else ()
    scored = dict(zip(chunk.good, predictions, strict=True))
    results: list[dict[str, Any]] = []
    for row in range(chunk.first_row, chunk.first_row + chunk.n_rows):
        found = scored.get(row)
        if found is None:
            results.append({"row": row, "error": chunk.errors.get(row, "not scored")})
        elif isinstance(found, ClassPrediction):
            results.append({"row": row, "label": found.label, "probabilities": found.probabilities})
        else:
            results.append({"row": row, "value": found.value})
    return encode_results(results)


def _spooled(source: SegmentStream) -> IO[bytes]:
    """Parquet needs a seekable file with its footer: the segments copied into a temporary file."""
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the runner
    with io.BufferedReader(source, buffer_size=1 << 20) as reader:
        while block := reader.read(1 << 20):
            spool.write(block)
    spool.seek(0)
    return spool
