"""Batch jobs: a user's dataset scored in the background (issue 23), its raw upload and its results.

The job row is the truth about a job, not the task queue: Huey does not acknowledge a task, so a
task dequeued by a worker that is then SIGKILLed is gone from the queue. A running job holds a
lease (`lease_until`, renewed at every chunk); a periodic task re-enqueues jobs whose lease expired.
Input and results live here too, so a worker on any machine reaches them and a chunk's results
commit in the same transaction as the job's progress (exactly once, docs/jobs.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import IDS_NEVER_REUSED, Base, UTCDateTime, as_created, utcnow

# A job's states. `uploading` is internal: the upload is still streaming in (never listed, never
# run; one left by a web process that died mid-upload is deleted by the retention task).
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, UPLOADING = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "uploading",
)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)


class Job(Base):
    __tablename__ = "jobs"
    # A user's jobs in id order (the list), and the reaper's scan of jobs by state.
    __table_args__ = (
        Index("ix_jobs_owner_id_id", "owner_id", "id"),
        Index("ix_jobs_state_id", "state", "id"),
        IDS_NEVER_REUSED,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(64))
    # What the client asked for (a version, an alias or None: `default`); `version` is the one
    # that serves the job, fixed when it starts and kept even if the alias moves.
    requested_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    input_format: Mapped[str] = mapped_column(String(16))
    # queued, running, succeeded, failed, cancelled
    state: Mapped[str] = mapped_column(String(16), default="queued")
    input_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rows_done: Mapped[int] = mapped_column(Integer, default=0)
    rows_failed: Mapped[int] = mapped_column(Integer, default=0)
    # Where the next chunk starts (app.jobs.formats' opaque resume point) and its sequence number.
    resume: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    next_chunk: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(100), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The problem object of a failed job (type, title, status, detail).
    error: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=as_created, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class JobInputSegment(Base):
    """The upload as it arrived: ordered byte segments (about 1 MiB each) of the raw file."""

    __tablename__ = "job_input_segments"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class JobResultChunk(Base):
    """One chunk's results (app.jobs.formats.encode_results), written with the job's progress."""

    __tablename__ = "job_result_chunks"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    first_row: Mapped[int] = mapped_column(Integer)
    n_rows: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
