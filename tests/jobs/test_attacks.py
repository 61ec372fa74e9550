"""Batch jobs attacked from outside (issue 23 review): races between a user's own requests,
results read while their job goes away, and the answers a client gets when the database does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from app.http.state import state_of
from app.jobs.formats import JobFormat
from app.models.job import Job
from app.repositories.jobs import JobRepository
from app.services.jobs import JobService, ResultsGone
from tests.conftest import Headers, assert_problem
from tests.jobs.conftest import iris_csv, submit_csv, wait_for
from tests.jobs.test_limits import job_settings
from tests.ops.conftest import running_app, user


async def _slow_upload(client: httpx.AsyncClient, headers: Headers, go: asyncio.Event) -> httpx.Response:
    """An upload whose body waits for `go` after its first bytes: it has passed the checks made
    before the body is read, and is still uploading."""

    async def body() -> AsyncIterator[bytes]:
        yield iris_csv(3)
        await go.wait()

    return await client.post(
        "/api/v1/jobs",
        params={"model": "iris"},
        content=body(),
        headers={**headers, "Content-Type": "text/csv"},
    )


async def test_uploads_sent_at_once_do_not_pass_the_queued_limit_together(database_url: str) -> None:
    # No worker: what is submitted stays queued, so the limit of one queued job is the last place.
    settings = job_settings(jobs_embedded_worker=False, jobs_max_queued_per_user=1)
    async with running_app(database_url, **settings) as (_, client):
        headers = await user(client)
        go = asyncio.Event()
        uploads = [asyncio.create_task(_slow_upload(client, headers, go)) for _ in range(3)]
        await asyncio.sleep(0.5)  # every upload is in, its body not finished
        go.set()
        answers = await asyncio.gather(*uploads)
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses.count(202) <= 1, [answer.text for answer in answers]
        for answer in answers:
            if answer.status_code != 202:
                assert assert_problem(answer, 429)["type"].endswith("/job-limit")
        listed = (await client.get("/api/v1/jobs", headers=headers)).json()["items"]
        assert len(listed) == statuses.count(202)
        # The place is taken: a later submit is refused too.
        later = await client.post(
            "/api/v1/jobs",
            params={"model": "iris"},
            content=iris_csv(3),
            headers={**headers, "Content-Type": "text/csv"},
        )
        if listed:
            assert_problem(later, 429)


async def test_results_of_a_job_deleted_while_they_download_end_in_an_error_not_a_short_file(
    app: FastAPI, client: httpx.AsyncClient, user_headers: Headers
) -> None:
    # 2,000 rows in chunks of 50: 40 stored chunks, read a page of them at a time.
    job = (await submit_csv(client, user_headers, iris_csv(2_000))).json()
    await wait_for(client, user_headers, job["id"], "succeeded")
    state = state_of(app)
    resources = state.resources
    service = JobService(resources.db, resources.registry, state.settings, resources.jobs.enqueue)
    async with resources.db.session(read_only=True) as session:
        stored = await JobRepository(session).get(job["id"], None)
    assert stored is not None
    body = service._stream(stored, JobFormat.CSV)
    received = [await anext(body), await anext(body)]  # the header and the first chunk's rows
    assert (await client.delete(f"/api/v1/jobs/{job['id']}", headers=user_headers)).status_code == 204
    # The download cannot end as if it were whole: the server breaks it off (the client sees a
    # connection closed before the end of the body), never a well-formed CSV of the first rows.
    with pytest.raises(ResultsGone):
        received.extend([piece async for piece in body])


async def test_a_job_whose_task_cannot_be_queued_is_accepted_and_run_by_the_reaper(
    app: FastAPI, client: httpx.AsyncClient, user_headers: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The queue's storage (Huey's tables: its own psycopg connection on PostgreSQL, its own file
    # on SQLite) refuses the task after the job's row is committed.
    queue = state_of(app).resources.jobs

    async def unreachable(job_id: int) -> None:
        raise OSError("connection refused")

    monkeypatch.setattr(queue, "enqueue", unreachable)
    submitted = await submit_csv(client, user_headers, iris_csv(5))
    assert submitted.status_code == 202, submitted.text
    monkeypatch.undo()
    # The job is stored and queued: the reaper (every JOBS_REAP_SECONDS) gives it a task again.
    done = await wait_for(client, user_headers, submitted.json()["id"], "succeeded", "failed")
    assert done["state"] == "succeeded"


async def test_two_workers_claiming_at_once_do_not_pass_the_running_limit_together(
    app: FastAPI, client: httpx.AsyncClient, user_headers: Headers
) -> None:
    # Two of the user's jobs queued (no task run: stored directly), claimed by two workers at once.
    db = state_of(app).resources.db
    owner = (await client.get("/api/v1/users/me", headers=user_headers)).json()["id"]
    async with db.session() as session:
        repo = JobRepository(session)
        ids = [(await repo.add(owner, "iris", None, "csv")).id for _ in range(2)]
        for job_id in ids:
            await repo.queue(job_id, 1)
        await session.commit()
    lease = datetime(2999, 1, 1, tzinfo=UTC)

    async def claim(job_id: int, worker: str) -> bool:
        async with db.session() as session:
            claimed = await JobRepository(session).claim(job_id, worker, lease, max_running=1)
            await session.commit()
        return claimed is not None

    claimed = await asyncio.gather(claim(ids[0], "a"), claim(ids[1], "b"))
    assert sorted(claimed) == [False, True]
    async with db.session(read_only=True) as session:
        assert await JobRepository(session).count(owner, "running") == 1


async def test_results_follow_the_accept_headers_preferences(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    job = (await submit_csv(client, user_headers, iris_csv(3))).json()
    await wait_for(client, user_headers, job["id"], "succeeded")
    url = f"/api/v1/jobs/{job['id']}/results"
    # The highest quality wins, wherever it is listed.
    preferred = await client.get(
        url, headers={**user_headers, "Accept": "application/x-ndjson;q=0.1, text/csv"}
    )
    assert preferred.headers["content-type"].startswith("text/csv")
    weighted = await client.get(
        url, headers={**user_headers, "Accept": "text/csv;q=0.5, application/vnd.apache.parquet;q=0.9"}
    )
    assert weighted.headers["content-type"] == "application/vnd.apache.parquet"
    # q=0 is "not this one" (RFC 9110, 12.4.2).
    refused = await client.get(url, headers={**user_headers, "Accept": "text/csv;q=0"})
    assert assert_problem(refused, 406)["errors"][0]["field"] == "Accept"
    other = await client.get(url, headers={**user_headers, "Accept": "text/csv;q=0, application/x-ndjson"})
    assert other.headers["content-type"].startswith("application/x-ndjson")


async def _write_elsewhere(app: FastAPI, job_id: int, **values: object) -> None:
    """A write committed by another connection (a worker's), now."""
    async with state_of(app).resources.db.engine.begin() as conn:
        await conn.execute(update(Job).where(Job.id == job_id).values(**values))


async def test_a_cancel_that_loses_the_race_with_the_jobs_end_is_a_409_naming_its_state(
    app: FastAPI, client: httpx.AsyncClient, user_headers: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = (await submit_csv(client, user_headers, iris_csv(3))).json()
    await wait_for(client, user_headers, job["id"], "succeeded")
    await _write_elsewhere(app, job["id"], state="running", finished_at=None)  # as it was a moment ago
    cancel = JobRepository.cancel

    async def worker_finishes_first(self: JobRepository, job_id: int, owner_id: int) -> bool:
        await _write_elsewhere(app, job_id, state="succeeded", finished_at=datetime.now(UTC))
        return await cancel(self, job_id, owner_id)

    monkeypatch.setattr(JobRepository, "cancel", worker_finishes_first)
    answer = await client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=user_headers)
    assert "succeeded" in assert_problem(answer, 409)["detail"]


async def test_a_finished_job_is_deleted_while_other_jobs_commit_their_work(
    app: FastAPI, client: httpx.AsyncClient, user_headers: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, busy = [(await submit_csv(client, user_headers, iris_csv(3))).json() for _ in range(2)]
    for job in (mine, busy):
        await wait_for(client, user_headers, job["id"], "succeeded")
    get = JobRepository.get

    async def another_job_commits_a_chunk(
        self: JobRepository, job_id: int, owner_id: int | None
    ) -> Job | None:
        found = await get(self, job_id, owner_id)
        await _write_elsewhere(app, busy["id"], updated_at=datetime.now(UTC))
        return found

    monkeypatch.setattr(JobRepository, "get", another_job_commits_a_chunk)
    deleted = await client.delete(f"/api/v1/jobs/{mine['id']}", headers=user_headers)
    assert deleted.status_code == 204, deleted.text
    monkeypatch.undo()
    assert_problem(await client.get(f"/api/v1/jobs/{mine['id']}", headers=user_headers), 404)
