"""Batch jobs: submit (an upload streamed into the database, or rows in a JSON body), read, list,
cancel, delete, and the results streamed back in a format of the client's choice.

A user's jobs only: another user's job is not found (admins read and list every job; only the
owner cancels or deletes). The upload is stored as it arrives, in segments of about 1 MiB, and
never held whole; its first bytes are checked against the model's features, so a file that cannot
be read fails here (4xx naming the field), not later in a worker.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import structlog

from app.core.config import Settings
from app.core.errors import AppError, Conflict, NotFound, PayloadTooLarge, TooManyRequests, ValidationFailed
from app.core.security import Principal
from app.db.database import Database
from app.jobs.formats import (
    MEDIA_TYPES,
    JobFormat,
    JobInputError,
    ResultWriter,
    UnsupportedJobFormat,
    check_head,
    decode_results,
    format_for,
)
from app.ml import errors as ml
from app.ml.fleet import VersionNotFound
from app.ml.manifest import ModelSpec
from app.ml.registry import ModelRegistry
from app.models.job import FINISHED, QUEUED, RUNNING, SUCCEEDED, Job
from app.repositories.jobs import JobRepository
from app.services.pagination import CursorPage, decode_cursor, keyset_page

log = structlog.get_logger(__name__)

SEGMENT_BYTES = 1 << 20
# How much of an upload check_head reads: a CSV header, a first JSON line, Parquet's magic bytes.
HEAD_BYTES = 64 << 10
OCTET_STREAM = "application/octet-stream"
# Result chunks read per query while streaming results.
CHUNKS_PER_READ = 8
_ACCEPT = {
    "text/csv": JobFormat.CSV,
    "application/csv": JobFormat.CSV,
    "application/x-ndjson": JobFormat.JSONL,
    "application/jsonl": JobFormat.JSONL,
    "application/vnd.apache.parquet": JobFormat.PARQUET,
    "application/x-parquet": JobFormat.PARQUET,
}


class JobNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("Job not found.")


class JobLimitReached(TooManyRequests):
    code = "job-limit"


class UploadTooLarge(PayloadTooLarge):
    code = "upload-too-large"


class UnsupportedUpload(AppError):
    status, code, title = 415, "unsupported-media-type", "Unsupported Media Type"


class NotAcceptable(AppError):
    status, code, title = 406, "not-acceptable", "Not Acceptable"


class JobNotFinished(Conflict):
    code = "job-not-finished"


class ResultsGone(RuntimeError):
    """The job was deleted while its results were being sent: the answer (its status already
    sent) is broken off, so that the client sees a failed download, not a short file."""


def _by_preference(accept: str) -> list[str]:
    """The media ranges of an `Accept` header, highest `q` first (in the order given among
    equals), those with q=0 ("not this one") and those with a malformed `q` left out."""
    ranked: list[tuple[float, str]] = []
    for part in accept.split(","):
        media, *params = (item.strip() for item in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if 0.0 < quality <= 1.0:
            ranked.append((quality, media.lower()))
    return [media for _, media in sorted(ranked, key=lambda pair: -pair[0])]


def _invalid(field: str, message: str, detail: str | None = None) -> ValidationFailed:
    return ValidationFailed(detail or f"{field}: {message}", errors=[{"field": field, "message": message}])


class JobService:
    def __init__(
        self,
        db: Database,
        registry: ModelRegistry,
        settings: Settings,
        enqueue: Callable[[int], Awaitable[None]],
    ) -> None:
        self.db = db
        self.registry = registry
        self.settings = settings
        self.enqueue = enqueue

    # --- submit ------------------------------------------------------------------------------------

    async def submit_upload(
        self,
        caller: Principal,
        *,
        model: str | None,
        version: str | None,
        content_type: str | None,
        filename: str | None,
        declared_length: int | None,
        body: AsyncIterator[bytes],
    ) -> Job:
        """A file streamed in: CSV, JSON Lines or Parquet (by media type, else by file name)."""
        if model is None:
            raise _invalid("model", "required: the model to score the file with")
        spec = self._spec(model, version)
        try:
            fmt = format_for(content_type, filename)
        except UnsupportedJobFormat as exc:
            raise UnsupportedUpload(
                exc.detail, errors=[{"field": exc.field, "message": exc.detail}]
            ) from None
        except JobInputError as exc:
            raise _invalid(exc.field, exc.detail) from None
        limit = self.settings.jobs_max_upload_bytes
        if declared_length is not None and declared_length > limit:
            raise self._too_large()
        await self._room_for_one_more(caller)
        return await self._store(
            caller=caller, spec=spec, model=model, version=version, fmt=fmt, body=body, limit=limit
        )

    async def submit_rows(
        self, caller: Principal, model: str, version: str | None, rows: Sequence[Any]
    ) -> Job:
        """A small job: rows sent in a JSON body, stored as JSON Lines."""
        spec = self._spec(model, version)
        if len(rows) > self.settings.jobs_max_rows:
            raise PayloadTooLarge(
                f"{len(rows)} rows sent; a job takes at most {self.settings.jobs_max_rows} (JOBS_MAX_ROWS).",
                errors=[{"field": "rows", "message": f"at most {self.settings.jobs_max_rows} rows"}],
            )
        await self._room_for_one_more(caller)
        try:
            data = "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows).encode()
        except (TypeError, ValueError):
            raise _invalid("rows", "rows must be JSON numbers (no NaN or Infinity)") from None

        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self._store(
            caller=caller,
            spec=spec,
            model=model,
            version=version,
            fmt=JobFormat.JSONL,
            body=one(),
            limit=len(data) + 1,
        )

    def _spec(self, model: str, version: str | None) -> ModelSpec:
        try:
            return self.registry.get(model, version)
        except ml.ModelNotFound as exc:
            raise _invalid(
                "model", f"no model named {model!r}; available: {', '.join(exc.available)}"
            ) from None
        except VersionNotFound:
            raise _invalid("version", f"model {model!r} has no version or alias {version!r}") from None
        except ml.ModelsNotReady:
            raise _invalid("model", "models are not loaded in this service") from None

    async def _room_for_one_more(self, caller: Principal, but: int | None = None) -> None:
        """Refused (429) when the caller's queued jobs and uploads in progress, `but` this one,
        fill JOBS_MAX_QUEUED_PER_USER. Checked before the body is read, and again once the job's
        row is committed: two submits at once then each see the other, and never both take the
        last place (both may be refused; Retry-After says when to try again)."""
        async with self.db.session(read_only=True) as session:
            queued = await JobRepository(session).count_waiting(caller.id, but)
        most = self.settings.jobs_max_queued_per_user
        if queued >= most:
            raise JobLimitReached(
                f"You have {queued} jobs queued or uploading, the most allowed (JOBS_MAX_QUEUED_PER_USER); "
                "submit more when some have started.",
                headers={"Retry-After": str(max(1, self.settings.jobs_reap_seconds))},
            )

    def _too_large(self) -> UploadTooLarge:
        limit = self.settings.jobs_max_upload_bytes
        return UploadTooLarge(
            f"The upload is larger than {limit} bytes (JOBS_MAX_UPLOAD_BYTES).",
            errors=[{"field": "file", "message": f"at most {limit} bytes"}],
            headers={"Connection": "close"},
        )

    async def _store(
        self,
        *,
        caller: Principal,
        spec: ModelSpec,
        model: str,
        version: str | None,
        fmt: JobFormat,
        body: AsyncIterator[bytes],
        limit: int,
    ) -> Job:
        async with self.db.session() as session:
            job = await JobRepository(session).add(caller.id, model, version, fmt.value)
            await session.commit()
        try:
            await self._room_for_one_more(caller, but=job.id)
            size = await self._segments(job.id, fmt, spec, body, limit)
            async with self.db.session() as session:
                await JobRepository(session).queue(job.id, size)
                await session.commit()
                stored = await JobRepository(session).get(job.id, caller.id)
        except BaseException:
            async with self.db.session() as session:
                await JobRepository(session).delete(job.id)
                await session.commit()
            raise
        if stored is None:  # deleted in between (the owner deleted)
            raise JobNotFound
        try:
            await self.enqueue(job.id)
        except Exception:
            # The job is stored and queued, and the reaper gives it a task within a reap period:
            # an error here would only make the client submit it a second time.
            log.warning("job_enqueue_failed", job_id=job.id, exc_info=True)
        return stored

    async def _segments(
        self, job_id: int, fmt: JobFormat, spec: ModelSpec, body: AsyncIterator[bytes], limit: int
    ) -> int:
        """Stream the body into segments of at least SEGMENT_BYTES (the pieces that reached it:
        one copy of each byte, not three as a bytearray sliced per segment), the head checked
        first. Returns the size in bytes."""
        pending: list[bytes] = []
        held = size = seq = 0
        checked = False

        async def flush() -> None:
            nonlocal seq, held
            data = b"".join(pending)
            pending.clear()
            held = 0
            async with self.db.session() as session:
                await JobRepository(session).add_segment(job_id, seq, data)
                await session.commit()
            seq += 1

        async for piece in body:
            size += len(piece)
            if size > limit:
                raise self._too_large()
            pending.append(piece)
            held += len(piece)
            if not checked and held >= HEAD_BYTES:
                head = b"".join(pending)
                pending[:] = [head]
                self._check_head(fmt, head[:HEAD_BYTES], spec)
                checked = True
            if held >= SEGMENT_BYTES:
                await flush()
        if size == 0:
            raise _invalid("file", "the upload is empty")
        if not checked:
            self._check_head(fmt, b"".join(pending), spec)
        if held:
            await flush()
        return size

    @staticmethod
    def _check_head(fmt: JobFormat, head: bytes, spec: ModelSpec) -> None:
        try:
            check_head(fmt, head, spec.feature_names)
        except JobInputError as exc:
            raise _invalid(exc.field, exc.detail) from None

    # --- read --------------------------------------------------------------------------------------

    async def get(self, caller: Principal, job_id: int) -> Job:
        """The caller's job (any job, for admins)."""
        async with self.db.session(read_only=True) as session:
            job = await JobRepository(session).get(job_id, None if caller.is_admin else caller.id)
        if job is None:
            raise JobNotFound
        return job

    async def page(
        self, caller: Principal, *, state: str | None, cursor: str | None, limit: int, every_user: bool
    ) -> CursorPage[Job]:
        """The caller's jobs in id order (with `every_user`, an admin's: every job)."""
        after = decode_cursor(cursor) if cursor else 0
        owner = None if every_user and caller.is_admin else caller.id
        async with self.db.session(read_only=True) as session:
            rows = await JobRepository(session).after(owner, state, after, limit + 1)
        return keyset_page(rows, limit, lambda job: job.id)

    # --- change ------------------------------------------------------------------------------------

    async def cancel(self, caller: Principal, job_id: int) -> Job:
        """A queued job never starts; a running one stops within one chunk. Cancelling a finished
        job is a 409 (it cannot be undone)."""
        async with self.db.session() as session:
            repo = JobRepository(session)
            job = await repo.get(job_id, caller.id)
            if job is None:
                raise JobNotFound
            # Finished when read, or between the read and the write (its worker's commit won).
            if job.state in FINISHED or not await repo.cancel(job_id, caller.id):
                await session.refresh(job)
                raise JobNotFinished(
                    f"The job has already {job.state}; only a queued or running job is cancelled."
                )
            await session.commit()
            await session.refresh(job)
        return job

    async def delete(self, caller: Principal, job_id: int) -> None:
        """A finished job and all its data; a queued or running one must be cancelled first (409)."""
        async with self.db.session() as session:
            repo = JobRepository(session)
            job = await repo.get(job_id, caller.id)
            if job is None:
                raise JobNotFound
            if job.state in (QUEUED, RUNNING):
                raise JobNotFinished(f"The job is {job.state}: cancel it first.")
            await repo.delete(job_id)
            await session.commit()

    # --- results -----------------------------------------------------------------------------------

    def result_format(self, accept: str | None, job: Job) -> tuple[JobFormat, str]:
        """The format `Accept` asks for (the first one known, in the order given), else the
        input's; and the media type to send it as (`application/octet-stream`, when asked for:
        the input's format as plain bytes, what generated clients read a binary answer as)."""
        own = JobFormat(job.input_format)
        if not accept:
            return own, MEDIA_TYPES[own]
        for media in _by_preference(accept):
            if media in _ACCEPT:
                return _ACCEPT[media], MEDIA_TYPES[_ACCEPT[media]]
            if media == OCTET_STREAM:
                return own, OCTET_STREAM
            if media in {"*/*", "application/*", "text/*", ""}:
                return own, MEDIA_TYPES[own]
        raise NotAcceptable(
            f"Results are sent as {', '.join(MEDIA_TYPES.values())}; `Accept` names none of them.",
            errors=[{"field": "Accept", "message": f"one of: {', '.join(MEDIA_TYPES.values())}"}],
        )

    async def results(
        self, caller: Principal, job_id: int, accept: str | None
    ) -> tuple[Job, JobFormat, str, AsyncIterator[bytes]]:
        """The job, the format, its media type and the results' bytes as they are read (a page of
        chunks at a time)."""
        job = await self.get(caller, job_id)
        fmt, media_type = self.result_format(accept, job)
        if job.state != SUCCEEDED:
            raise JobNotFinished(f"The job is {job.state}: results are ready once it has succeeded.")
        return job, fmt, media_type, self._stream(job, fmt)

    def _classes(self, job: Job) -> list[str] | None:
        for version in (job.version, None):
            try:
                spec = self.registry.get(job.model, version)
            except ml.ModelError:
                continue
            return list(spec.labels) if spec.task == "classification" else None
        return None

    async def _stream(self, job: Job, fmt: JobFormat) -> AsyncIterator[bytes]:
        classes = self._classes(job)
        first: list[dict[str, Any]] | None = None
        seq = 0
        chunks: Sequence[Any] = ()
        # The classes from the first stored result when the model is no longer served here.
        async with self.db.session(read_only=True) as session:
            chunks = await JobRepository(session).result_chunks(job.id, 0, CHUNKS_PER_READ)
        if classes is None and chunks:
            first = decode_results(chunks[0].data)
            labelled = next((row for row in first if "probabilities" in row), None)
            if labelled is not None:
                classes = list(labelled["probabilities"])
        writer = ResultWriter(fmt, classes)
        yield writer.start()
        while chunks:
            for chunk in chunks:
                rows = first if first is not None and chunk.seq == 0 else decode_results(chunk.data)
                yield writer.write(rows)
                seq = chunk.seq + 1
            async with self.db.session(read_only=True) as session:
                chunks = await JobRepository(session).result_chunks(job.id, seq, CHUNKS_PER_READ)
        if seq != job.next_chunk:  # deleted (by its owner, or retention) while being read
            raise ResultsGone(
                f"job {job.id}: results deleted after {seq} of {job.next_chunk} chunks were sent"
            )
        yield writer.finish()
