"""Batch job schemas for /api/v1/jobs (docs/jobs.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from app.ml.names import MODEL_NAME_PATTERN, VERSION_PATTERN
from app.schemas.common import RequestModel, ResponseModel
from app.schemas.prediction import Rows

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class JobCreate(RequestModel):
    """A small job sent as JSON: the rows in the body. Large ones upload a file instead."""

    model: str = Field(pattern=MODEL_NAME_PATTERN, description="The model's name.")
    version: str | None = Field(
        None, pattern=VERSION_PATTERN, description="A version or an alias (default: `default`)."
    )
    rows: Rows


class JobProblem(ResponseModel):
    """Why a job failed, as problem details."""

    type: str
    title: str
    status: int
    detail: str


class JobPublic(ResponseModel):
    id: int
    owner_id: int
    state: JobState
    model: str
    requested_version: str | None = Field(description="The version or alias asked for (null: `default`).")
    version: str | None = Field(description="The model version serving the job, fixed when it starts.")
    input_format: str = Field(description="`csv`, `jsonl` or `parquet`: the results' default format.")
    input_bytes: int
    rows_total: int | None = Field(description="Input rows, once the whole input has been read.")
    rows_done: int = Field(description="Input rows scored so far (those with a per-row error included).")
    rows_failed: int = Field(description="Rows that could not be scored: each has its error in the results.")
    error: JobProblem | None = Field(description="Why the job failed (state `failed`).")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPage(ResponseModel):
    items: list[JobPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


def public(row: Any) -> JobPublic:
    return JobPublic.model_validate(row, from_attributes=True)
