"""/api/v1/jobs: batch predictions that run in the background (docs/jobs.md).

Submit a file (CSV, JSON Lines, Parquet: the body itself, streamed into the database) or a few
rows in a JSON body; poll the job; download its results; cancel it; delete it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from app.api.deps import CursorQuery, JobReader, JobServiceDep, JobWriter, PageLimit
from app.api.v1 import PREFIX
from app.core.errors import PayloadTooLarge, ValidationFailed
from app.http.multipart import file_part
from app.http.state import state_of
from app.jobs.formats import MEDIA_TYPES
from app.ml.names import MODEL_NAME_PATTERN, VERSION_PATTERN
from app.models.job import Job
from app.schemas.common import AUTHENTICATED_ERRORS, problem_responses
from app.schemas.job import JobCreate, JobPage, JobPublic, JobState, public

router = APIRouter(prefix=f"{PREFIX}/jobs", tags=["jobs"], responses=problem_responses(*AUTHENTICATED_ERRORS))

JobId = Path(ge=1, le=2**31 - 1, description="The job's id.")
_OCTETS = "application/octet-stream"
_BINARY = {"schema": {"type": "string", "format": "binary"}}
SUBMIT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A file to score: the body itself (`model` and `version` in the query), or "
        "a form's `file` part (`model` and `version` as fields before it, or in the query: "
        "`curl -F model=iris -F file=@rows.csv`); or a JSON object with the rows (`model`, `version` "
        "and `rows`, for small jobs).",
        "content": {
            "application/json": {"schema": JobCreate.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "title": "JobUpload",
                    "required": ["file"],
                    "properties": {
                        "model": {
                            "type": "string",
                            "pattern": MODEL_NAME_PATTERN,
                            "description": "The model (or `model` in the query).",
                        },
                        "version": {
                            "type": "string",
                            "pattern": VERSION_PATTERN,
                            "description": "A version or alias (default: `default`).",
                        },
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The rows: CSV, JSON Lines or Parquet, by the part's "
                            "media type or else its file name. The last part of the form.",
                        },
                    },
                },
                "encoding": {"file": {"contentType": ", ".join((*MEDIA_TYPES.values(), _OCTETS))}},
            },
            **dict.fromkeys(MEDIA_TYPES.values(), _BINARY),
            "application/octet-stream": _BINARY,
        },
    }
}
RESULTS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One row per input row, in input order. `application/octet-stream` (listed "
        "first: generated clients then read the answer as bytes) is the input's format, when asked for.",
        "content": dict.fromkeys(("application/octet-stream", *MEDIA_TYPES.values()), _BINARY),
    }
}


def _created(job: Job, response: Response) -> JobPublic:
    response.headers["Location"] = f"{PREFIX}/jobs/{job.id}"
    return public(job)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Submit a batch job",
    openapi_extra=SUBMIT_BODY,
    responses={
        **problem_responses(400, 413, 415, 422),
        202: {"headers": {"Location": {"description": "The job's URL.", "schema": {"type": "string"}}}},
    },
)
async def submit_job(
    *,
    request: Request,
    caller: JobWriter,
    jobs: JobServiceDep,
    response: Response,
    model: Annotated[
        str | None, Query(pattern=MODEL_NAME_PATTERN, description="The model (with a file upload).")
    ] = None,
    version: Annotated[
        str | None, Query(pattern=VERSION_PATTERN, description="A version or alias (default: `default`).")
    ] = None,
    filename: Annotated[
        str | None,
        Query(
            max_length=255,
            description="The file's name: its suffix names the format when the media type does not.",
        ),
    ] = None,
    content_type: Annotated[str | None, Header(include_in_schema=False)] = None,
    content_length: Annotated[int | None, Header(include_in_schema=False)] = None,
) -> JobPublic:
    """Answers 202 with the job (`queued`) and its URL in `Location`; poll it until it has
    `succeeded`, then read `/results`. The file's first bytes are checked here (a CSV header that
    lacks a feature, a first JSON line that is not JSON, a file that is not Parquet: 422 naming
    `file`); a row that cannot be scored gets its own error in the results instead."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json":
        body = await _json_body(request, state_of(request).settings.max_request_body_bytes)
        return _created(await jobs.submit_rows(caller, body.model, body.version, body.rows), response)
    stream: AsyncIterator[bytes] = request.stream()
    if media == "multipart/form-data":
        form = await file_part(content_type or "", stream)
        model = _one_of(form.fields, "model", model, MODEL_NAME_PATTERN)
        version = _one_of(form.fields, "version", version, VERSION_PATTERN)
        filename, content_type, stream = form.filename, form.content_type, form.body
        content_length = None  # the form's, not the file's: the limit is checked as it streams
    job = await jobs.submit_upload(
        caller,
        model=model,
        version=version,
        content_type=content_type,
        filename=filename,
        declared_length=content_length,
        body=stream,
    )
    return _created(job, response)


def _one_of(fields: dict[str, str], name: str, query: str | None, pattern: str) -> str | None:
    """A form field (checked as the query's is), or the same name in the query; both, if they
    differ, are a 422."""
    sent = fields.get(name)
    if sent is None:
        return query
    if not re.fullmatch(pattern, sent):
        raise ValidationFailed(
            f"{name}: {sent!r} does not match {pattern}",
            errors=[{"field": name, "message": f"must match {pattern}"}],
        )
    if query is not None and query != sent:
        raise ValidationFailed(
            f"{name}: sent twice, as {query!r} in the query and {sent!r} in the form",
            errors=[{"field": name, "message": "sent twice with different values"}],
        )
    return sent


async def _json_body(request: Request, limit: int) -> JobCreate:
    """The JSON body, under the service's ordinary body limit (a JSON job is a small one)."""
    data = bytearray()
    async for piece in request.stream():
        data += piece
        if len(data) > limit:
            raise PayloadTooLarge(
                f"A JSON job's body is at most {limit} bytes; upload a file for a larger job.",
                errors=[{"field": "rows", "message": f"at most {limit} bytes of JSON"}],
            )
    try:
        return JobCreate.model_validate_json(bytes(data))
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
        ) from None


@router.get("", summary="List the caller's jobs", responses=problem_responses(422))
async def list_jobs(
    *,
    caller: JobReader,
    jobs: JobServiceDep,
    cursor: CursorQuery = None,
    limit: PageLimit = 20,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    all_users: Annotated[bool, Query(description="Admins: every user's jobs.")] = False,
) -> JobPage:
    """Oldest first, in cursor pages."""
    page = await jobs.page(caller, state=state, cursor=cursor, limit=limit, every_user=all_users)
    return JobPage(items=[public(job) for job in page.items], next_cursor=page.next_cursor)


@router.get("/{job_id}", summary="Read a job", responses=problem_responses(404, 422))
async def read_job(caller: JobReader, jobs: JobServiceDep, job_id: int = JobId) -> JobPublic:
    """State, rows done, the version serving it, and on failure a problem object. Another user's
    job is a 404, the same as a missing one."""
    return public(await jobs.get(caller, job_id))


@router.get(
    "/{job_id}/results",
    summary="Download a job's results",
    response_class=StreamingResponse,
    responses={**RESULTS, **problem_responses(404, 406, 409, 422)},
)
async def job_results(
    caller: JobReader,
    jobs: JobServiceDep,
    job_id: int = JobId,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> StreamingResponse:
    """In the input's format, or the one `Accept` names (`text/csv`, `application/x-ndjson`,
    `application/vnd.apache.parquet`). Each row: `row` (its index in the input), then the
    prediction (`label` and the probabilities, or `value`), or its `error`. 409 until the job has
    succeeded."""
    job, fmt, media_type, body = await jobs.results(caller, job_id, accept)
    suffix = {"csv": "csv", "jsonl": "jsonl", "parquet": "parquet"}[fmt.value]
    return StreamingResponse(
        body,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="job-{job.id}-results.{suffix}"'},
    )


@router.post("/{job_id}/cancel", summary="Cancel a job", responses=problem_responses(404, 409, 422))
async def cancel_job(caller: JobWriter, jobs: JobServiceDep, job_id: int = JobId) -> JobPublic:
    """A queued job never runs; a running one stops within one chunk. 409 if it has finished."""
    return public(await jobs.cancel(caller, job_id))


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a finished job and its data",
    responses=problem_responses(404, 409, 422),
)
async def delete_job(caller: JobWriter, jobs: JobServiceDep, job_id: int = JobId) -> None:
    """409 while it is queued or running: cancel it first."""
    await jobs.delete(caller, job_id)
