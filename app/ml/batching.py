"""Adaptive micro-batching per model: coalesce concurrent requests into one runtime call, bounded.

How a batch is formed (all on the event loop, no locks):

* Requests wait in a bounded queue; when `max_queue` requests already wait, the next one is refused
  at once with ModelOverloaded (no waiting, so a client can go elsewhere).
* A dispatcher takes the queued requests, up to `max_batch_size` rows, whenever one of the
  model's `concurrency` runtime slots is free. When the runtime is idle it dispatches at once: a
  lone request never waits for company. While other batches of the model are running, it waits up
  to `max_batch_wait_ms` (counted from the oldest queued request) for more rows. Under load the
  batches therefore grow by themselves while the runtime is busy, and add no latency when idle.
* Each request has a time limit (`timeout_ms`, queue wait included). Past it the caller gets
  PredictionTimeout; a request still queued is removed so it costs nothing, and a running batch is
  bounded by the runtime's hard limit (`timeout_ms * hard_timeout_factor`).

With batching switched off every request is its own runtime call; the queue bound, the slots and
the time limits stay the same, so a benchmark compares only the coalescing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from app.ml.errors import (
    BackendError,
    BackendUnavailable,
    ModelError,
    ModelOverloaded,
    ModelsNotReady,
    ModelWorkerCrashed,
    PredictionFailed,
    PredictionTimeout,
)
from app.ml.runtimes.base import Runtime

log = logging.getLogger(__name__)

# Called after every runtime call: (model name, version, rows in the batch, requests in the batch,
# seconds).
BatchObserver = Callable[[str, str, int, int, float], None]


@dataclass(slots=True)
class BatcherStats:
    """Counters since start; read them from a metrics collector (they are plain ints)."""

    requests: int = 0  # accepted into the queue
    rejected: int = 0  # refused with ModelOverloaded
    timeouts: int = 0  # got PredictionTimeout
    failures: int = 0  # got ModelWorkerCrashed or PredictionFailed
    batches: int = 0  # runtime calls made
    batch_rows: int = 0  # rows over all runtime calls (batch_rows / batches = mean batch size)
    max_batch_rows: int = 0  # largest batch so far


@dataclass(eq=False, slots=True)
class _Request:
    rows: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued_at: float  # loop.time()
    queued: bool = True


@dataclass(slots=True)
class BatchingConfig:
    """The limits of one model's batcher (from its manifest entry and the registry settings)."""

    max_batch_size: int
    max_batch_wait_s: float
    max_queue: int
    timeout_ms: int
    concurrency: int
    hard_timeout_factor: float = 3.0
    enabled: bool = True


class MicroBatcher:
    """One model's queue and dispatcher; `submit` returns the runtime's output rows for a request."""

    def __init__(
        self,
        name: str,
        runtime: Runtime,
        config: BatchingConfig,
        on_batch: BatchObserver | None = None,
        *,
        version: str = "",
    ) -> None:
        self.name = name
        self.version = version
        self.config = config
        self.stats = BatcherStats()
        self._runtime = runtime
        self._on_batch = on_batch
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._busy = 0  # batches running in the runtime
        self._slots = asyncio.Semaphore(config.concurrency)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._dispatcher: asyncio.Task[None] | None = None
        self._batch_seconds = 0.0  # moving average of a runtime call, for Retry-After

    # --- gauges -----------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a runtime slot."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Batches running in the runtime now."""
        return self._busy

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name=f"ml-batcher-{self.name}")

    async def drain(self) -> None:
        """Wait until nothing is queued or running (the caller stops new submissions first)."""
        while self._queue or self._busy:
            self._idle.clear()
            await self._idle.wait()

    async def stop(self) -> None:
        """Stop the dispatcher; anything still queued or running (after a drain() that timed out)
        fails with ModelsNotReady, so its callers get an answer rather than a cancellation."""
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
            self._dispatcher = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._queue:
            request = self._queue.popleft()
            request.queued = False
            if not request.future.done():
                request.future.set_exception(ModelsNotReady())
        self._queued_rows = 0

    # --- submitting -------------------------------------------------------------------------------

    def retry_after(self) -> int:
        """Whole seconds after which the queue has likely drained (at least 1)."""
        per_batch = max(self._batch_seconds, 0.001)
        if self.config.enabled:
            batches = math.ceil(self._queued_rows / self.config.max_batch_size) + 1
        else:
            batches = len(self._queue) + 1
        return max(1, math.ceil(batches * per_batch / self.config.concurrency))

    async def submit(self, rows: np.ndarray) -> np.ndarray:
        """Queue one request's validated rows and wait for its outputs, within its time limit."""
        config = self.config
        if len(self._queue) >= config.max_queue:
            self.stats.rejected += 1
            raise ModelOverloaded(self.name, self.retry_after())
        loop = asyncio.get_running_loop()
        request = _Request(rows, loop.create_future(), loop.time())
        self._queue.append(request)
        self._queued_rows += len(rows)
        self.stats.requests += 1
        self._wake.set()
        try:
            async with asyncio.timeout(config.timeout_ms / 1000):
                return await request.future
        except TimeoutError:
            self._forget(request)
            self.stats.timeouts += 1
            raise PredictionTimeout(self.name, config.timeout_ms) from None
        except asyncio.CancelledError:
            # The caller went away (client disconnected): do not compute for nobody.
            self._forget(request)
            raise
        except PredictionTimeout:  # the batch hit the runtime's hard limit
            self.stats.timeouts += 1
            raise
        except (ModelWorkerCrashed, PredictionFailed, BackendUnavailable, BackendError):
            self.stats.failures += 1
            raise

    def _forget(self, request: _Request) -> None:
        if request.queued:
            request.queued = False
            self._queue.remove(request)
            self._queued_rows -= len(request.rows)
            self._notify_idle()

    def _notify_idle(self) -> None:
        if not self._queue and not self._busy:
            self._idle.set()

    # --- dispatching ------------------------------------------------------------------------------

    async def _wait_for_requests(self) -> None:
        while not self._queue:
            self._wake.clear()
            await self._wake.wait()

    async def _wait_for_more(self) -> None:
        """Under load, give concurrent requests up to max_batch_wait to join the batch."""
        loop = asyncio.get_running_loop()
        deadline = self._queue[0].enqueued_at + self.config.max_batch_wait_s
        while self._queue and self._queued_rows < self.config.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._wake.wait()

    def _take_batch(self) -> list[_Request]:
        batch: list[_Request] = []
        rows = 0
        limit = self.config.max_batch_size if self.config.enabled else 0
        while self._queue:
            head = self._queue[0]
            # Whole requests only; the first one always fits (validation caps a request's rows).
            if batch and rows + len(head.rows) > limit:
                break
            self._queue.popleft()
            head.queued = False
            rows += len(head.rows)
            batch.append(head)
        self._queued_rows -= rows
        return batch

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wait_for_requests()
            await self._slots.acquire()
            try:
                ready = await self._runtime.wait_ready()
                if ready and self.config.enabled and self._busy > 0 and self._queue:
                    await self._wait_for_more()
                batch = self._take_batch()
            except BaseException:
                self._slots.release()
                raise
            if not batch:  # every queued request timed out or left meanwhile
                self._slots.release()
                self._notify_idle()
                continue
            self._busy += 1
            task = asyncio.create_task(self._run(batch, ready))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Request], ready: bool) -> None:
        rows = sum(len(r.rows) for r in batch)
        started = time.perf_counter()
        try:
            if not ready:
                raise ModelWorkerCrashed(self.name)
            x = batch[0].rows if len(batch) == 1 else np.concatenate([r.rows for r in batch])
            hard_timeout_s = self.config.timeout_ms / 1000 * self.config.hard_timeout_factor
            outputs = await self._runtime.run(x, hard_timeout_s)
        except asyncio.CancelledError:  # stop() after a drain that timed out
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(ModelsNotReady())
            raise
        except Exception as exc:  # noqa: BLE001 - every failure must reach the waiting requests
            self._fail(batch, exc)
        else:
            offset = 0
            for request in batch:
                n = len(request.rows)
                # A request that timed out meanwhile has a cancelled future: skip it.
                if not request.future.done():
                    request.future.set_result(outputs[offset : offset + n])
                offset += n
        finally:
            seconds = time.perf_counter() - started
            self._busy -= 1
            self._slots.release()
            self._record(rows, len(batch), seconds)
            self._notify_idle()

    def _fail(self, batch: list[_Request], exc: Exception) -> None:
        if not isinstance(exc, ModelError):
            log.error("model %s: the runtime raised for a batch", self.name, exc_info=exc)
        for request in batch:
            if not request.future.done():
                # A fresh exception per request: one shared instance would accumulate every
                # caller's traceback as each of them re-raises it.
                error = self._error_for(exc)
                error.__cause__ = exc
                request.future.set_exception(error)

    def _error_for(self, exc: Exception) -> ModelError:
        if isinstance(exc, PredictionTimeout):
            return PredictionTimeout(self.name, self.config.timeout_ms)
        if isinstance(exc, ModelWorkerCrashed):
            return ModelWorkerCrashed(self.name)
        if isinstance(exc, BackendUnavailable):
            return BackendUnavailable(self.name, exc.reason, exc.retry_after)
        if isinstance(exc, BackendError):
            return BackendError(self.name, exc.reason)
        return PredictionFailed(self.name)

    def _record(self, rows: int, requests: int, seconds: float) -> None:
        stats = self.stats
        stats.batches += 1
        stats.batch_rows += rows
        stats.max_batch_rows = max(stats.max_batch_rows, rows)
        # Exponential moving average: recent batches matter most for a Retry-After estimate.
        self._batch_seconds = seconds if stats.batches == 1 else 0.8 * self._batch_seconds + 0.2 * seconds
        if self._on_batch is not None:
            try:
                self._on_batch(self.name, self.version, rows, requests, seconds)
            except Exception:  # a metrics hook must never break serving
                log.exception("model %s: batch observer failed", self.name)
