"""Batch jobs' tests: an app with the models and the embedded worker, and helpers to submit a job
and wait for it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from app.core.config import Settings
from tests.conftest import Headers, make_settings

# A state reached within this; a limit that only stops a test that would otherwise hang.
WAIT_LIMIT_S = 120.0
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(
        database_url,
        ml_enabled=True,
        rate_limit_enabled=False,
        jobs_embedded_worker=True,
        jobs_chunk_rows=50,
        jobs_reap_seconds=1,
    )


def iris_csv(rows: int, *, bad: dict[int, str] | None = None) -> bytes:
    """A CSV of `rows` iris rows (row i: values from i); `bad` replaces whole lines by index."""
    lines = [",".join(FEATURES)]
    for i in range(rows):
        line = f"{4 + i % 4}.{i % 10},{3 + i % 2}.{i % 7},{1 + i % 5}.{i % 3},0.{1 + i % 9}"
        lines.append((bad or {}).get(i, line))
    return ("\n".join(lines) + "\n").encode()


async def submit_csv(
    client: httpx.AsyncClient, headers: Headers, data: bytes, **params: str
) -> httpx.Response:
    return await client.post(
        "/api/v1/jobs",
        params={"model": "iris", **params},
        content=data,
        headers={**headers, "Content-Type": "text/csv"},
    )


async def wait_for(
    client: httpx.AsyncClient, headers: Headers, job_id: int, *states: str, limit_s: float = WAIT_LIMIT_S
) -> dict[str, Any]:
    """The job once it is in one of `states` (polled; fails past the limit)."""
    deadline = time.monotonic() + limit_s
    while True:
        response = await client.get(f"/api/v1/jobs/{job_id}", headers=headers)
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']} after {limit_s} s: {job}"
        await asyncio.sleep(0.05)
