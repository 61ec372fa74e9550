"""Shadow traffic (issue 24): a copy of a share of an alias's requests goes to another version, off
the response path, and its answer is recorded beside the primary's, never returned.

The caller's answer, latency and errors do not depend on the shadow: a copy is handed over with
`put_nowait` after the primary has answered, to a bounded queue read by a few tasks of this
process; a full queue, the time limit and any failure of the shadow drop the copy, counted
(`shadow_dropped_total`) and never raised. The record (`shadow_records`) holds the shadow's
outputs and how far they agreed with the primary's (labels alike, or the summed absolute
difference of values); live quality sums them (app.services.quality).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import structlog

from app.ml.errors import PredictionTimeout
from app.ml.predictions import ClassPrediction, PredictionResult, RegressionPrediction, output_values
from app.ml.registry import ModelRegistry, Served
from app.observability import metrics
from app.services.prediction_log import PredictionLog, asked_of

log = structlog.get_logger(__name__)

# The most queued copies one task takes at once (then split by shadow and by its batch size).
DRAIN_COPIES = 256


@dataclass(frozen=True, slots=True)
class ShadowCopy:
    served: Served
    rows: Any  # the request's rows as sent (checked again against the shadow's features)
    one: bool  # a single row of features (`run_one`), not a batch
    primary: PredictionResult
    prediction_id: uuid.UUID
    user_id: int


class ShadowRunner:
    def __init__(
        self, registry: ModelRegistry, prediction_log: PredictionLog, *, queue_size: int, workers: int
    ) -> None:
        self.registry = registry
        self.log = prediction_log
        self._queue: asyncio.Queue[ShadowCopy] = asyncio.Queue(maxsize=queue_size)
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []

    def _start(self) -> None:
        """Its tasks, at the first copy: a process whose aliases have no shadow runs none."""
        self._tasks = [asyncio.create_task(self._work(), name=f"shadow-{i}") for i in range(self._workers)]

    async def close(self) -> None:
        """Stop; copies still queued or running are dropped (a shadow is best effort)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def offer(self, copy: ShadowCopy) -> None:
        """Hand a copy over without waiting; a full queue drops it (counted)."""
        if not self._tasks:
            self._start()
        try:
            self._queue.put_nowait(copy)
        except asyncio.QueueFull:
            self._dropped(copy, "queue-full")

    async def _work(self) -> None:
        while True:
            copies = [await self._queue.get()]
            # What else is queued goes with it: copies to one shadow run as one batch (a busy
            # primary makes the queue longer, and each copy cheaper).
            while len(copies) < DRAIN_COPIES and not self._queue.empty():
                copies.append(self._queue.get_nowait())
            groups: dict[int, list[ShadowCopy]] = {}
            for copy in copies:
                groups.setdefault(id(copy.served), []).append(copy)
            for group in groups.values():
                for batch in _batches(group):
                    try:
                        await self._run(batch)
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # noqa: BLE001 - whatever the shadow does, it stays the shadow's
                        for copy in batch:
                            self._dropped(copy, "failed")

    async def _run(self, batch: list[ShadowCopy]) -> None:
        served = batch[0].served
        spec = served.spec
        rows = [row for copy in batch for row in ([copy.rows] if copy.one else copy.rows)]
        started = time.perf_counter()
        try:
            # The model's own time limit (its batcher's), and a guard above it for a runtime or
            # model server that hangs past it.
            async with asyncio.timeout(spec.timeout_ms / 1000 * 3):
                result = await self.registry.run(served, rows)
        except (TimeoutError, PredictionTimeout):
            for copy in batch:
                self._dropped(copy, "timeout")
            return
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        asked = asked_of(spec, result)
        if asked is not None:
            self.log.count(asked)  # the shadow's drift: the rows it was asked about, its answers
        at = 0
        for copy in batch:
            n = len(copy.primary.predictions)
            answered = replace(result, predictions=result.predictions[at : at + n])
            at += n
            agreed, difference = _agreement(copy.primary, answered)
            self.log.record_shadow(
                {
                    "prediction_id": copy.prediction_id,
                    "user_id": copy.user_id,
                    "model": spec.name,
                    "version": copy.primary.version,
                    "shadow_version": spec.version,
                    "rows": n,
                    "agreed": agreed,
                    "abs_difference": difference,
                    "outputs": output_values(answered),
                    "latency_ms": latency_ms,
                }
            )
        metrics.SHADOW_PREDICTIONS.labels(spec.name, spec.version).inc(len(batch))

    @staticmethod
    def _dropped(copy: ShadowCopy, reason: str) -> None:
        spec = copy.served.spec
        metrics.SHADOW_DROPPED.labels(spec.name, spec.version, reason).inc()
        log.debug("shadow_dropped", model=spec.name, version=spec.version, reason=reason)


def _batches(copies: list[ShadowCopy]) -> list[list[ShadowCopy]]:
    """`copies` (to one shadow) in batches of at most its `max_batch_size` rows."""
    most = copies[0].served.spec.batching.max_batch_size
    out: list[list[ShadowCopy]] = [[]]
    rows = 0
    for copy in copies:
        n = len(copy.primary.predictions)
        if out[-1] and rows + n > most:
            out.append([])
            rows = 0
        out[-1].append(copy)
        rows += n
    return out


def _agreement(primary: PredictionResult, shadow: PredictionResult) -> tuple[int | None, float | None]:
    """Rows whose labels were alike (classifiers), or the summed |shadow - primary| (regressors)."""
    pairs = list(zip(primary.predictions, shadow.predictions, strict=True))
    if all(isinstance(p, ClassPrediction) and isinstance(s, ClassPrediction) for p, s in pairs):
        return sum(p.label == s.label for p, s in pairs), None  # type: ignore[union-attr]
    if all(isinstance(p, RegressionPrediction) and isinstance(s, RegressionPrediction) for p, s in pairs):
        return None, sum(abs(p.value - s.value) for p, s in pairs)  # type: ignore[union-attr]
    raise ValueError("the shadow's task is not the primary's")
