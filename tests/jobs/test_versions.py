"""A job keeps the model version it started with: an alias moved mid-job does not move it; the
version unloaded under it fails it with a problem naming the version."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.http.state import state_of
from app.jobs.runner import JobRunner
from tests.conftest import Headers, assert_problem
from tests.jobs.conftest import WAIT_LIMIT_S, iris_csv, submit_csv, wait_for
from tests.ml.conftest import MakeModelDir, make_model_dir, model_entry  # noqa: F401 - the fixture
from tests.ops.conftest import running_app, user

REPOSITORY = "/api/v1/model-repository/iris"
ROWS = 40_000


@pytest.fixture
async def served(
    database_url: str,
    make_model_dir: MakeModelDir,  # noqa: F811 - the fixture
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    def edit(manifest: dict[str, Any]) -> None:
        iris = model_entry(manifest, "iris")
        manifest["models"].append({**copy.deepcopy(iris), "version": "2.0.0"})

    settings = {
        "ml_enabled": True,
        "ml_model_dir": make_model_dir(edit, only=("iris",)),
        "rate_limit_enabled": False,
        "model_state_poll_seconds": 0.1,
        "jobs_embedded_worker": True,
        "jobs_chunk_rows": 20,
    }
    async with running_app(database_url, **settings) as pair:
        yield pair


async def admin_of(app: FastAPI, client: httpx.AsyncClient) -> Headers:
    headers = await user(client)
    me = (await client.get("/api/v1/users/me", headers=headers)).json()
    async with state_of(app).resources.db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE users SET is_admin = :yes WHERE id = :id"), {"yes": True, "id": me["id"]}
        )
    return headers


async def point(client: httpx.AsyncClient, admin: Headers, version: str) -> None:
    """`production` to `version`, then wait until this process routes it there."""
    response = await client.put(
        "/api/v1/models/iris/aliases/production", json={"version": version}, headers=admin
    )
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + WAIT_LIMIT_S
    while True:
        answer = await client.post(
            "/api/v1/models/iris/versions/production/predict",
            json={"rows": [[5.1, 3.5, 1.4, 0.2]]},
            headers=admin,
        )
        if answer.status_code == 200 and answer.json()["version"] == version:
            return
        assert time.monotonic() < deadline, answer.text
        await asyncio.sleep(0.05)


def requests_to(app: FastAPI, version: str) -> int:
    return state_of(app).resources.registry.metrics()[("iris", version)].stats.requests


async def started(client: httpx.AsyncClient, headers: Headers, job_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_LIMIT_S
    while True:
        job = (await client.get(f"/api/v1/jobs/{job_id}", headers=headers)).json()
        if job["rows_done"] > 0:
            return dict(job)
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.02)


async def test_an_alias_moved_mid_job_leaves_the_job_on_its_version(
    served: tuple[FastAPI, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client = served
    admin = await admin_of(app, client)
    assert (await client.post(f"{REPOSITORY}/versions/2.0.0/load", headers=admin)).status_code == 200
    await point(client, admin, "1.0.0")
    # The job's second chunk waits until the alias has moved: the rest of the job runs after it.
    moved = threading.Event()
    outputs = JobRunner._outputs
    calls = 0

    async def after_the_move(self: JobRunner, job: Any, served: Any, rows: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            assert await asyncio.to_thread(moved.wait, WAIT_LIMIT_S)
        return await outputs(self, job, served, rows)

    monkeypatch.setattr(JobRunner, "_outputs", after_the_move)
    job = (await submit_csv(client, admin, iris_csv(200), version="production")).json()
    assert job["requested_version"] == "production"
    running = await started(client, admin, job["id"])
    assert running["version"] == "1.0.0"
    await point(client, admin, "2.0.0")
    before = requests_to(app, "2.0.0")
    moved_at = (await client.get(f"/api/v1/jobs/{job['id']}", headers=admin)).json()
    assert moved_at["state"] == "running"
    assert moved_at["rows_done"] < 200
    moved.set()
    done = await wait_for(client, admin, job["id"], "succeeded", "failed")
    assert done["state"] == "succeeded", done
    assert done["version"] == "1.0.0"
    assert requests_to(app, "2.0.0") == before  # not one of the job's batches went to 2.0.0
    # Jobs submitted now follow the alias.
    later = (await submit_csv(client, admin, iris_csv(5), version="production")).json()
    assert (await wait_for(client, admin, later["id"], "succeeded"))["version"] == "2.0.0"


async def test_a_version_unloaded_under_a_job_fails_it_naming_the_version(
    served: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = served
    admin = await admin_of(app, client)
    assert (await client.post(f"{REPOSITORY}/versions/2.0.0/load", headers=admin)).status_code == 200
    await point(client, admin, "2.0.0")
    job = (await submit_csv(client, admin, iris_csv(ROWS), version="production")).json()
    assert (await started(client, admin, job["id"]))["version"] == "2.0.0"
    await point(client, admin, "1.0.0")
    unloaded = await client.post(f"{REPOSITORY}/versions/2.0.0/unload", headers=admin)
    assert unloaded.status_code == 200, unloaded.text
    failed = await wait_for(client, admin, job["id"], "failed", "succeeded")
    assert failed["state"] == "failed", failed
    assert failed["error"]["type"].endswith("/model-version-gone")
    assert "2.0.0" in failed["error"]["detail"]
    assert failed["rows_done"] < ROWS
    assert_problem(await client.get(f"/api/v1/jobs/{job['id']}/results", headers=admin), 409)
