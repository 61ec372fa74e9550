"""Queries on batch jobs, their input segments and result chunks.

The web's queries take the owner (`owner_id`; None only for an admin's reads): another user's job
is simply not found. The runner's (`claim`, `commit_chunk`, ...) take the worker holding the lease:
a write of a worker whose lease was lost (reaped, cancelled, handed back) changes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.base import utcnow
from app.models.job import (
    CANCELLED,
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    UPLOADING,
    Job,
    JobInputSegment,
    JobResultChunk,
)
from app.models.prediction import PredictionRecord
from app.models.user import User


class JobRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # --- the web: submit, read, list, cancel, delete ----------------------------------------------

    async def add(self, owner_id: int, model: str, requested_version: str | None, input_format: str) -> Job:
        job = Job(
            owner_id=owner_id,
            model=model,
            requested_version=requested_version,
            input_format=input_format,
            state=UPLOADING,
        )
        self.session.add(job)
        await self.session.flush()
        return job

    async def add_segment(self, job_id: int, seq: int, data: bytes) -> None:
        await self.session.execute(insert(JobInputSegment).values(job_id=job_id, seq=seq, data=data))

    async def queue(self, job_id: int, input_bytes: int) -> None:
        await self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == UPLOADING)
            .values(state=QUEUED, input_bytes=input_bytes, updated_at=utcnow())
        )

    async def count(self, owner_id: int, state: str) -> int:
        found = await self.session.scalar(
            select(func.count()).select_from(Job).where(Job.owner_id == owner_id, Job.state == state)
        )
        return int(found or 0)

    async def count_waiting(self, owner_id: int, but: int | None = None) -> int:
        """The owner's jobs queued or still uploading (a place in the queue each), `but` one."""
        query = (
            select(func.count())
            .select_from(Job)
            .where(Job.owner_id == owner_id, Job.state.in_((QUEUED, UPLOADING)))
        )
        if but is not None:
            query = query.where(Job.id != but)
        return int(await self.session.scalar(query) or 0)

    async def get(self, job_id: int, owner_id: int | None) -> Job | None:
        """The job, if `owner_id` owns it (None: any owner, for admins); never one still uploading."""
        query = select(Job).where(Job.id == job_id, Job.state != UPLOADING)
        if owner_id is not None:
            query = query.where(Job.owner_id == owner_id)
        job: Job | None = await self.session.scalar(query)
        return job

    async def after(
        self, owner_id: int | None, state: str | None, after_id: int, limit: int
    ) -> Sequence[Job]:
        query = select(Job).where(Job.id > after_id, Job.state != UPLOADING)
        if owner_id is not None:
            query = query.where(Job.owner_id == owner_id)
        if state is not None:
            query = query.where(Job.state == state)
        return (await self.session.scalars(query.order_by(Job.id).limit(limit))).all()

    async def cancel(self, job_id: int, owner_id: int) -> bool:
        """Queued or running: cancelled now (a running job's worker stops at its next chunk)."""
        now = utcnow()
        result = await self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.owner_id == owner_id, Job.state.in_((QUEUED, RUNNING)))
            .values(state=CANCELLED, finished_at=now, updated_at=now, lease_owner=None, lease_until=None)
        )
        return bool(getattr(result, "rowcount", 0))

    async def delete(self, job_id: int) -> None:
        """The job and its data (children first: SQLite enforces no cascade unless told to)."""
        await self.session.execute(delete(JobResultChunk).where(JobResultChunk.job_id == job_id))
        await self.session.execute(delete(JobInputSegment).where(JobInputSegment.job_id == job_id))
        await self.session.execute(delete(Job).where(Job.id == job_id))

    async def result_chunks(self, job_id: int, from_seq: int, limit: int) -> Sequence[JobResultChunk]:
        query = (
            select(JobResultChunk)
            .where(JobResultChunk.job_id == job_id, JobResultChunk.seq >= from_seq)
            .order_by(JobResultChunk.seq)
            .limit(limit)
        )
        return (await self.session.scalars(query)).all()

    # --- the runner: claim, read, write, finish ----------------------------------------------------

    async def claim(self, job_id: int, worker: str, lease_until: datetime, max_running: int) -> Job | None:
        """Take the job for `worker` if it is queued (or running under an expired lease) and its
        owner runs fewer than `max_running` jobs; None otherwise."""
        now = utcnow()
        # The owner's row held until the caller commits, before anything is read: two workers
        # claiming two of one owner's jobs at once would otherwise both count the running ones
        # before either is running, and both pass the last place. A write that changes nothing,
        # as UserRepository.lock: it locks on every backend (the row on PostgreSQL, the database
        # on SQLite, where it is the transaction's first statement and so waits, not fails).
        owner = select(Job.owner_id).where(Job.id == job_id).scalar_subquery()
        await self.session.execute(update(User).where(User.id == owner).values(updated_at=User.updated_at))
        job = await self.session.scalar(select(Job).where(Job.id == job_id))
        if job is None:
            return None
        orphaned = job.state == RUNNING and (job.lease_until is None or job.lease_until < now)
        if job.state != QUEUED and not orphaned:
            return None
        if job.state == QUEUED and await self.count(job.owner_id, RUNNING) >= max_running:
            return None
        result = await self.session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                or_(
                    Job.state == QUEUED,
                    and_(Job.state == RUNNING, or_(Job.lease_until.is_(None), Job.lease_until < now)),
                ),
            )
            .values(
                state=RUNNING,
                lease_owner=worker,
                lease_until=lease_until,
                attempts=Job.attempts + 1,
                started_at=func.coalesce(Job.started_at, now),
                updated_at=now,
            )
        )
        if not getattr(result, "rowcount", 0):
            return None
        await self.session.refresh(job)
        return job

    async def segment(self, job_id: int, seq: int) -> bytes | None:
        data: bytes | None = await self.session.scalar(
            select(JobInputSegment.data).where(JobInputSegment.job_id == job_id, JobInputSegment.seq == seq)
        )
        return data

    async def segment_sizes(self, job_id: int) -> list[int]:
        rows = await self.session.execute(
            select(JobInputSegment.seq, func.length(JobInputSegment.data))
            .where(JobInputSegment.job_id == job_id)
            .order_by(JobInputSegment.seq)
        )
        return [int(size) for _, size in rows.all()]

    async def oldest_of_owner(self, owner_id: int, state: str) -> int | None:
        found: int | None = await self.session.scalar(
            select(func.min(Job.id)).where(Job.owner_id == owner_id, Job.state == state)
        )
        return found

    async def pin_version(self, job_id: int, worker: str, version: str) -> bool:
        return await self._as_holder(job_id, worker, version=version)

    async def commit_chunk(
        self,
        job_id: int,
        worker: str,
        *,
        seq: int,
        first_row: int,
        n_rows: int,
        n_failed: int,
        data: bytes,
        resume: bytes,
        lease_until: datetime,
    ) -> bool:
        """The chunk's results and the job's progress, in the caller's transaction; False (and
        nothing written) when `worker` no longer holds the job."""
        held = await self._as_holder(
            job_id,
            worker,
            rows_done=Job.rows_done + n_rows,
            rows_failed=Job.rows_failed + n_failed,
            next_chunk=seq + 1,
            resume=resume,
            lease_until=lease_until,
            _where=Job.next_chunk == seq,
        )
        if held:
            await self.session.execute(
                insert(JobResultChunk).values(
                    job_id=job_id, seq=seq, first_row=first_row, n_rows=n_rows, data=data
                )
            )
        return held

    async def renew(self, job_id: int, worker: str, lease_until: datetime) -> bool:
        return await self._as_holder(job_id, worker, lease_until=lease_until)

    async def succeed(self, job_id: int, worker: str, rows_total: int) -> bool:
        now = utcnow()
        return await self._as_holder(
            job_id,
            worker,
            state=SUCCEEDED,
            rows_total=rows_total,
            finished_at=now,
            lease_owner=None,
            lease_until=None,
        )

    async def fail(self, job_id: int, worker: str, problem: dict[str, Any]) -> bool:
        return await self._as_holder(
            job_id,
            worker,
            state=FAILED,
            error=problem,
            finished_at=utcnow(),
            lease_owner=None,
            lease_until=None,
        )

    async def hand_back(self, job_id: int, worker: str) -> bool:
        """Back to the queue, leased to nobody (a worker shutting down)."""
        return await self._as_holder(job_id, worker, state=QUEUED, lease_owner=None, lease_until=None)

    async def _as_holder(self, job_id: int, worker: str, _where: Any = None, **values: Any) -> bool:
        query = update(Job).where(Job.id == job_id, Job.state == RUNNING, Job.lease_owner == worker)
        if _where is not None:
            query = query.where(_where)
        result = await self.session.execute(query.values(updated_at=utcnow(), **values))
        return bool(getattr(result, "rowcount", 0))

    async def record_prediction(
        self, *, user_id: int, model: str, version: str, rows: int, latency_ms: float, outcome: str
    ) -> None:
        """The job's one record in its owner's prediction history."""
        await self.session.execute(
            insert(PredictionRecord).values(
                user_id=user_id,
                model=model,
                version=version,
                rows=rows,
                latency_ms=latency_ms,
                outcome=outcome,
                created_at=utcnow(),
            )
        )

    # --- the engine's periodic tasks ---------------------------------------------------------------

    async def to_requeue(self, queued_before: datetime) -> list[int]:
        """Jobs that need a task: running under an expired lease, or queued since before
        `queued_before` (their task lost, or their owner's running limit was full)."""
        now = utcnow()
        query = select(Job.id).where(
            or_(
                and_(Job.state == RUNNING, or_(Job.lease_until.is_(None), Job.lease_until < now)),
                and_(Job.state == QUEUED, Job.updated_at < queued_before),
            )
        )
        return list((await self.session.scalars(query.order_by(Job.id))).all())

    async def expired(self, finished_before: datetime, uploading_before: datetime) -> list[int]:
        query = select(Job.id).where(
            or_(
                and_(Job.state.in_(FINISHED), Job.finished_at < finished_before),
                and_(Job.state == UPLOADING, Job.created_at < uploading_before),
            )
        )
        return list((await self.session.scalars(query)).all())

    async def touch(self, job_ids: Sequence[int]) -> None:
        """Mark queued jobs re-enqueued now, so the reaper does not re-enqueue them again at once."""
        if job_ids:
            await self.session.execute(
                update(Job).where(Job.id.in_(job_ids), Job.state == QUEUED).values(updated_at=utcnow())
            )

    async def counts_by_state(self) -> dict[str, int]:
        rows = await self.session.execute(select(Job.state, func.count()).group_by(Job.state))
        return {state: int(n) for state, n in rows.all()}

    async def oldest_queued(self) -> datetime | None:
        found: datetime | None = await self.session.scalar(
            select(func.min(Job.created_at)).where(Job.state == QUEUED)
        )
        return found
