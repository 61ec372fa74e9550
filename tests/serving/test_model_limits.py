"""A model's time limit and queue bound, over HTTP: the manifest's `timeout_ms` and `max_queue`
(in an edited copy of ml_models/) reach the client as 504 and 503 + Retry-After problems."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx

from app.http.state import state_of
from tests.conftest import assert_problem
from tests.ml.conftest import MakeModelDir, model_entry
from tests.ops.conftest import running_app, user

WAIT_S = 30.0
HEAVY = "breast_cancer"
ROW = [10.0] * 30


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {WAIT_S} s"
        await asyncio.sleep(0.01)


async def test_a_prediction_past_its_time_limit_answers_504(
    database_url: str, make_model_dir: MakeModelDir
) -> None:
    def tiny_time_limit(manifest: dict[str, Any]) -> None:
        # A process round trip plus a 100-tree forest takes milliseconds: always past 1 ms.
        model_entry(manifest, HEAVY)["timeout_ms"] = 1

    model_dir = make_model_dir(tiny_time_limit, only=(HEAVY,))
    async with running_app(
        database_url, ml_enabled=True, ml_model_dir=model_dir, rate_limit_enabled=False
    ) as (
        app,
        client,
    ):
        headers = await user(client)
        response = await client.post(f"/api/v1/models/{HEAVY}/predict", json={"rows": [ROW]}, headers=headers)
        problem = assert_problem(response, 504)
        assert "1 ms" in problem["detail"]
        heavy = await client.post("/api/v1/predict-heavy", json={"features": ROW}, headers=headers)
        assert_problem(heavy, 504)
        assert state_of(app).resources.registry.metrics()[(HEAVY, "1.0.0")].stats.timeouts == 2


async def test_a_full_model_queue_answers_503_with_retry_after(
    database_url: str, make_model_dir: MakeModelDir
) -> None:
    """One worker, one queue place: with the worker stopped (SIGSTOP, a stuck batch), the first
    request runs, the second waits, the third is refused at once; all recover once it resumes."""

    def one_place(manifest: dict[str, Any]) -> None:
        entry = model_entry(manifest, HEAVY)
        entry["max_queue"] = 1
        entry["timeout_ms"] = 120_000  # the stuck batch must not time out during the test

    model_dir = make_model_dir(one_place, only=(HEAVY,))
    async with running_app(
        database_url, ml_enabled=True, ml_model_dir=model_dir, ml_process_workers=1, rate_limit_enabled=False
    ) as (app, client):
        registry = state_of(app).resources.registry
        headers = await user(client)

        async def predict() -> httpx.Response:
            return await client.post("/api/v1/predict-heavy", json={"features": ROW}, headers=headers)

        (worker,) = registry.worker_pids(HEAVY)
        os.kill(worker, signal.SIGSTOP)
        try:
            running = asyncio.create_task(predict())
            await _until(
                lambda: registry.metrics()[(HEAVY, "1.0.0")].in_flight_batches == 1,
                "the first request running",
            )
            waiting = asyncio.create_task(predict())
            await _until(
                lambda: registry.metrics()[(HEAVY, "1.0.0")].queue_depth == 1, "the second request queued"
            )
            refused = await asyncio.wait_for(predict(), WAIT_S)  # a queued one would never answer
            problem = assert_problem(refused, 503)
            assert "overloaded" in problem["detail"]
            assert int(refused.headers["retry-after"]) >= 1
            # Refused at once: the two requests ahead of it are still waiting for the worker.
            assert not running.done()
            assert not waiting.done()
            assert registry.metrics()[(HEAVY, "1.0.0")].stats.rejected == 1
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGCONT)
        assert [(await task).status_code for task in (running, waiting)] == [200, 200]
        assert (await predict()).status_code == 200
