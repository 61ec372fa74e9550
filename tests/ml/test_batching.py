"""Micro-batching: coalescing, bounded queue, time limits; with a scripted runtime, then for real."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from app.ml.batching import BatchingConfig, MicroBatcher
from app.ml.errors import ModelOverloaded, ModelWorkerCrashed, PredictionFailed, PredictionTimeout
from app.ml.predictions import ClassPrediction
from app.ml.registry import ModelRegistry
from tests.ml.conftest import MakeModelDir, model_entry, settings_for, wait_until


class ScriptedRuntime:
    """Doubles every input; blocks while `gate` is clear; records each batch it is given."""

    def __init__(self, *, fail_with: Exception | None = None) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.batches: list[int] = []
        self.fail_with = fail_with

    async def wait_ready(self) -> bool:
        return True

    async def run(self, x: np.ndarray, hard_timeout_s: float) -> np.ndarray:
        self.batches.append(len(x))
        async with asyncio.timeout(hard_timeout_s):
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return x.astype(np.float64) * 2

    async def close(self, *, force: bool = False) -> None:  # noqa: ARG002 - Runtime protocol
        return None


def _batcher(runtime: ScriptedRuntime, **overrides: Any) -> MicroBatcher:
    values: dict[str, Any] = {
        "max_batch_size": 8,
        "max_batch_wait_s": 0.005,
        "max_queue": 100,
        "timeout_ms": 1000,
        "concurrency": 1,
    }
    values.update(overrides)
    batcher = MicroBatcher("scripted", runtime, BatchingConfig(**values))
    batcher.start()
    return batcher


def _row(value: float) -> np.ndarray:
    return np.array([[value]], dtype=np.float32)


@pytest.mark.asyncio
async def test_a_lone_request_is_dispatched_at_once() -> None:
    runtime = ScriptedRuntime()
    batcher = _batcher(runtime, max_batch_wait_s=1.0)
    started = time.perf_counter()
    out = await batcher.submit(_row(3))
    # max_batch_wait is 1 s: an idle runtime must not make a lone request wait for it.
    assert time.perf_counter() - started < 0.2
    assert out.tolist() == [[6.0]]
    await batcher.stop()


@pytest.mark.asyncio
async def test_concurrent_requests_are_coalesced_and_split_back_in_order() -> None:
    runtime = ScriptedRuntime()
    runtime.gate.clear()
    batcher = _batcher(runtime)
    first = asyncio.create_task(batcher.submit(_row(-1)))
    await wait_until(lambda: batcher.in_flight == 1)
    # While the runtime is busy, 20 requests queue up; they leave in batches of at most 8 rows.
    tasks = [asyncio.create_task(batcher.submit(_row(i))) for i in range(20)]
    await wait_until(lambda: batcher.queue_depth == 20)
    runtime.gate.set()
    results = await asyncio.gather(first, *tasks)
    assert [r.tolist() for r in results] == [[[-2.0]]] + [[[2.0 * i]] for i in range(20)]
    assert runtime.batches == [1, 8, 8, 4]
    assert batcher.stats.batches == 4
    assert batcher.stats.max_batch_rows == 8
    await batcher.stop()


@pytest.mark.asyncio
async def test_with_batching_off_every_request_is_its_own_call() -> None:
    runtime = ScriptedRuntime()
    batcher = _batcher(runtime, enabled=False)
    results = await asyncio.gather(*(batcher.submit(_row(i)) for i in range(10)))
    assert [r.tolist() for r in results] == [[[2.0 * i]] for i in range(10)]
    assert runtime.batches == [1] * 10
    await batcher.stop()


@pytest.mark.asyncio
async def test_full_queue_refuses_at_once_with_retry_after() -> None:
    runtime = ScriptedRuntime()
    runtime.gate.clear()
    batcher = _batcher(runtime, max_queue=3)
    running = asyncio.create_task(batcher.submit(_row(0)))
    await wait_until(lambda: batcher.in_flight == 1)
    queued = [asyncio.create_task(batcher.submit(_row(i))) for i in range(3)]
    await wait_until(lambda: batcher.queue_depth == 3)
    started = time.perf_counter()
    with pytest.raises(ModelOverloaded) as caught:
        await batcher.submit(_row(9))
    assert time.perf_counter() - started < 0.05  # refused without waiting
    assert caught.value.retry_after >= 1
    assert batcher.stats.rejected == 1
    runtime.gate.set()
    await asyncio.gather(running, *queued)
    await batcher.stop()


@pytest.mark.asyncio
async def test_time_limit_gives_prediction_timeout_and_drops_queued_work() -> None:
    runtime = ScriptedRuntime()
    runtime.gate.clear()
    batcher = _batcher(runtime, timeout_ms=50, hard_timeout_factor=100)
    running = asyncio.create_task(batcher.submit(_row(0)))
    await wait_until(lambda: batcher.in_flight == 1)
    started = time.perf_counter()
    with pytest.raises(PredictionTimeout) as caught:
        await batcher.submit(_row(1))  # stuck behind the running batch
    assert 0.04 < time.perf_counter() - started < 0.5
    assert caught.value.timeout_ms == 50
    # The queued request was removed: the runtime will never be asked to compute it.
    assert batcher.queue_depth == 0
    with pytest.raises(PredictionTimeout):
        await running
    runtime.gate.set()
    await batcher.drain()
    assert runtime.batches == [1]
    assert batcher.stats.timeouts == 2
    await batcher.stop()


@pytest.mark.asyncio
async def test_runtime_errors_reach_every_request_of_the_batch() -> None:
    runtime = ScriptedRuntime(fail_with=ModelWorkerCrashed("scripted"))
    batcher = _batcher(runtime)
    results = await asyncio.gather(*(batcher.submit(_row(i)) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ModelWorkerCrashed) for r in results)
    assert len({id(r) for r in results}) == 3  # one exception object per request
    runtime.fail_with = ValueError("bug")
    with pytest.raises(PredictionFailed):
        await batcher.submit(_row(1))
    assert batcher.stats.failures == 4
    await batcher.stop()


def _as_arrays(predictions: list[Any]) -> tuple[list[int], np.ndarray]:
    if isinstance(predictions[0], ClassPrediction):
        probabilities = [list(p.probabilities.values()) for p in predictions]
        return [p.class_index for p in predictions], np.array(probabilities)
    return [], np.array([p.value for p in predictions])


@pytest.mark.asyncio
async def test_batched_and_unbatched_predictions_are_identical(
    make_model_dir: MakeModelDir, train_models: ModuleType
) -> None:
    def generous_limits(manifest: dict[str, Any]) -> None:
        # Unbatched requests run one after the other: equality is tested here, not speed.
        for entry in manifest["models"]:
            entry["timeout_ms"] = 60_000

    model_dir = make_model_dir(generous_limits)
    # Real rows (float32 rounding differences grow on out-of-distribution inputs); fewer forest
    # rows because unbatched they run one after the other at ~3 ms each.
    sizes = {"iris": 150, "breast_cancer": 64, "diabetes": 128}
    rows = {name: train_models.DATASETS[name]().x[:n].tolist() for name, n in sizes.items()}
    answers: dict[bool, dict[str, list[Any]]] = {}
    calls: dict[bool, int] = {}
    for batching in (True, False):
        registry = ModelRegistry(settings_for(model_dir, batching_enabled=batching))
        await registry.start()
        try:
            answers[batching] = {}
            for name, model_rows in rows.items():
                results = await asyncio.gather(*(registry.predict_one(name, row) for row in model_rows))
                answers[batching][name] = [r.predictions[0] for r in results]
            calls[batching] = sum(m.stats.batches for m in registry.metrics().values())
        finally:
            await registry.close()
    assert calls[False] == sum(sizes.values())  # one runtime call per request
    assert calls[True] < 40  # coalesced
    # scikit-learn's forest computes each row on its own: batching changes nothing, bit for bit.
    assert answers[True]["breast_cancer"] == answers[False]["breast_cancer"]
    # ONNX Runtime picks a different float32 matrix kernel for 1 row than for many (another
    # summation order), so the last bits of a float32 may differ: the classes are the same and
    # values agree within 1e-6 absolute + 1e-5 relative (measured on these datasets: 4.5e-7
    # absolute for probabilities, 2.5e-7 relative for the regression).
    for name in ("iris", "diabetes"):
        batched_classes, batched = _as_arrays(answers[True][name])
        single_classes, single = _as_arrays(answers[False][name])
        assert batched_classes == single_classes
        np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)


@pytest.mark.asyncio
async def test_registry_time_limit_on_the_process_pool(make_model_dir: MakeModelDir) -> None:
    def tiny_timeout(manifest: dict[str, Any]) -> None:
        model_entry(manifest, "breast_cancer")["timeout_ms"] = 1

    model_dir: Path = make_model_dir(tiny_timeout, only=("breast_cancer",))
    # A high hard-limit factor: only the request's own time limit is exercised here.
    registry = ModelRegistry(settings_for(model_dir, hard_timeout_factor=1000))
    await registry.start()
    try:
        # A process round trip plus a 100-tree forest takes well over 1 ms.
        with pytest.raises(PredictionTimeout):
            await registry.predict_one("breast_cancer", [10.0] * 30)
        assert registry.metrics()[("breast_cancer", "1.0.0")].stats.timeouts == 1
    finally:
        await registry.close()
