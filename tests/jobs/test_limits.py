"""Every limit of jobs: the upload's size (413 while the body streams), queued and running jobs
per user, rows per job; and cancel, which stops a running job within one chunk."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from sqlalchemy import update

from app.http.state import state_of
from app.models.job import Job
from tests.conftest import assert_problem
from tests.jobs.conftest import iris_csv, submit_csv, wait_for
from tests.ops.conftest import running_app, user


def job_settings(**overrides: Any) -> dict[str, Any]:
    return {
        "ml_enabled": True,
        "rate_limit_enabled": False,
        "jobs_embedded_worker": True,
        "jobs_reap_seconds": 1,
        **overrides,
    }


async def test_an_upload_past_the_limit_is_refused_while_it_streams(database_url: str) -> None:
    async with running_app(database_url, **job_settings(jobs_max_upload_bytes=200_000)) as (_, client):
        headers = await user(client)
        sent = 0

        async def endless() -> AsyncIterator[bytes]:
            nonlocal sent
            yield iris_csv(1)
            while sent < 50_000_000:  # far past the limit: the server must stop reading first
                sent += 64 << 10
                yield b"5.1,3.5,1.4,0.2\n" * 4096

        response = await client.post(
            "/api/v1/jobs",
            params={"model": "iris"},
            content=endless(),
            headers={**headers, "Content-Type": "text/csv"},
        )
        body = assert_problem(response, 413)
        assert body["type"].endswith("/upload-too-large")
        assert body["errors"][0]["field"] == "file"
        assert sent < 1_000_000
        # A declared length past the limit is refused before anything is read.
        declared = await client.post(
            "/api/v1/jobs",
            params={"model": "iris"},
            content=b"x" * 200_001,
            headers={**headers, "Content-Type": "text/csv"},
        )
        assert_problem(declared, 413)
        # A form's file part is held to the same limit as it streams.
        sent = 0

        async def endless_form() -> AsyncIterator[bytes]:
            nonlocal sent
            yield b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\niris\r\n'
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="r.csv"\r\n\r\n'
            yield iris_csv(1)
            while sent < 50_000_000:
                sent += 64 << 10
                yield b"5.1,3.5,1.4,0.2\n" * 4096

        as_form = await client.post(
            "/api/v1/jobs",
            content=endless_form(),
            headers={**headers, "Content-Type": "multipart/form-data; boundary=b"},
        )
        assert assert_problem(as_form, 413)["errors"][0]["field"] == "file"
        assert sent < 1_000_000
        assert (await client.get("/api/v1/jobs", headers=headers)).json()["items"] == []


async def _hold_running(app: FastAPI, job_id: int) -> None:
    """Make a job look taken by a live worker elsewhere (its lease far ahead)."""
    async with state_of(app).resources.db.engine.begin() as conn:
        await conn.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(state="running", lease_owner="elsewhere", lease_until=datetime(2999, 1, 1, tzinfo=UTC))
        )


async def test_queued_and_running_jobs_per_user_are_limited(database_url: str) -> None:
    settings = job_settings(jobs_max_queued_per_user=2, jobs_max_running_per_user=1)
    async with running_app(database_url, **settings) as (app, client):
        headers, other = await user(client), await user(client)
        first = (await submit_csv(client, headers, iris_csv(5))).json()
        await wait_for(client, headers, first["id"], "succeeded")
        await _hold_running(app, first["id"])  # the user's one running place is taken
        waiting = [(await submit_csv(client, headers, iris_csv(5))).json() for _ in range(2)]
        refused = await submit_csv(client, headers, iris_csv(5))
        body = assert_problem(refused, 429)
        assert body["type"].endswith("/job-limit")
        assert "Retry-After" in refused.headers
        # Another user has places of their own.
        theirs = (await submit_csv(client, other, iris_csv(5))).json()
        await wait_for(client, other, theirs["id"], "succeeded")
        await asyncio.sleep(3)  # three reaper periods: the waiting jobs are offered again, and wait
        for job in waiting:
            assert (await client.get(f"/api/v1/jobs/{job['id']}", headers=headers)).json()[
                "state"
            ] == "queued"
        # The running one ends: the queued ones run, one at a time.
        assert (await client.post(f"/api/v1/jobs/{first['id']}/cancel", headers=headers)).status_code == 200
        for job in waiting:
            await wait_for(client, headers, job["id"], "succeeded")


async def test_a_job_over_the_row_limit_fails_naming_the_limit(database_url: str) -> None:
    async with running_app(database_url, **job_settings(jobs_max_rows=100, jobs_chunk_rows=30)) as (
        _,
        client,
    ):
        headers = await user(client)
        job = (await submit_csv(client, headers, iris_csv(101))).json()
        failed = await wait_for(client, headers, job["id"], "failed", "succeeded")
        assert failed["state"] == "failed"
        assert failed["error"]["type"].endswith("/too-many-rows")
        assert "100" in failed["error"]["detail"]
        # The failed job is in its owner's history as soon as it reads failed, with the rows it did.
        history = (await client.get("/api/v1/predictions", headers=headers)).json()["items"]
        assert [(r["model"], r["rows"], r["outcome"]) for r in history] == [("iris", 90, "job-failed")]
        within = (await submit_csv(client, headers, iris_csv(100))).json()
        assert (await wait_for(client, headers, within["id"], "failed", "succeeded"))["state"] == "succeeded"
        too_many = await client.post(
            "/api/v1/jobs", json={"model": "iris", "rows": [[1, 2, 3, 4]] * 101}, headers=headers
        )
        assert assert_problem(too_many, 413)["errors"][0]["field"] == "rows"


async def test_cancel_stops_a_running_job_within_one_chunk(database_url: str) -> None:
    async with running_app(database_url, **job_settings(jobs_chunk_rows=20)) as (_, client):
        headers = await user(client)
        job = (await submit_csv(client, headers, iris_csv(100_000))).json()
        deadline = asyncio.get_running_loop().time() + 120
        while True:
            seen = (await client.get(f"/api/v1/jobs/{job['id']}", headers=headers)).json()
            if seen["rows_done"] > 0:
                break
            assert asyncio.get_running_loop().time() < deadline, seen
            await asyncio.sleep(0.02)
        cancelled = await client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=headers)
        assert cancelled.status_code == 200, cancelled.text
        at_cancel = cancelled.json()
        assert at_cancel["state"] == "cancelled"
        assert at_cancel["rows_done"] < 100_000
        # One worker thread: once a later job has run, the cancelled job's run has ended.
        later = (await submit_csv(client, headers, iris_csv(3))).json()
        await wait_for(client, headers, later["id"], "succeeded")
        after = (await client.get(f"/api/v1/jobs/{job['id']}", headers=headers)).json()
        assert after["state"] == "cancelled"
        assert after["rows_done"] == at_cancel["rows_done"]
