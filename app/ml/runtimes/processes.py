"""The runtime of every process kind (skops): a pool of worker processes per model version.

Which code loads the file in a worker is the kind's (`RuntimeKind.implementation`, its `load`);
app.ml.worker calls it. A batch past its hard time limit cannot be interrupted inside the model,
so the pool's workers are killed and the pool recycled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from app.ml import forkserver, worker
from app.ml.errors import ModelLoadError, ModelWorkerCrashed, PredictionTimeout

if TYPE_CHECKING:
    from app.ml.manifest import ModelSpec

log = logging.getLogger(__name__)

StartMethod = Literal["forkserver", "spawn"]
# Delay between attempts to rebuild a process pool whose workers cannot start.
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


class ProcessPoolRuntime:
    """A model in a pool of worker processes that each load it once, in their initializer, with
    the `load` of the module `implementation` names.

    Requests ship only numpy arrays. A worker that dies breaks the pool (BrokenProcessPool): the
    batches it held fail with ModelWorkerCrashed and a new pool is started at once. A batch past
    its hard time limit cannot be interrupted inside scikit-learn, so the pool's workers are killed
    and the pool recycled the same way.
    """

    def __init__(
        self,
        spec: ModelSpec,
        path: Path,
        file: str,
        *,
        implementation: str,
        workers: int,
        start_method: StartMethod = "forkserver",
        start_timeout_s: float = 120.0,
        nice: int = 0,
    ) -> None:
        self.spec = spec
        self._nice = nice
        self._path = path
        self._file = file
        self._implementation = implementation
        self._workers = workers
        self._start_timeout_s = start_timeout_s
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # Affects only the forkserver started for this process (it is started once, lazily,
            # or early by the server entry point: app.ml.forkserver).
            forkserver.use_preload(self._context)
        self._pool: ProcessPoolExecutor | None = None
        self._generation = 0
        self._ready = asyncio.Event()
        self._failure: str | None = None
        self._restart_task: asyncio.Task[None] | None = None
        self._closing = False
        # Workers of replaced pools, joined by close() so that none outlives the registry.
        self._retired: list[BaseProcess] = []
        self.restarts = 0  # pools replaced after a crash or a hard timeout

    # --- start / restart -------------------------------------------------------------------------

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=self._context,
            initializer=worker.init,
            initargs=(
                self._implementation,
                str(self._path),
                self.spec.local_sha256,
                list(self.spec.trusted_types),
                self._nice,
                os.getpid(),  # the workers end when this process is gone, however it ended
            ),
        )

    async def _spawn(self) -> ProcessPoolExecutor:
        """A new pool whose every worker has loaded the model, or ModelLoadError naming the file."""
        pool = self._new_pool()
        try:
            # Submitting `workers` tasks at once makes the pool start all its workers now rather
            # than on demand, so the first requests do not pay for a worker start.
            futures = [asyncio.wrap_future(pool.submit(worker.describe)) for _ in range(self._workers)]
            async with asyncio.timeout(self._start_timeout_s):
                answers: list[dict[str, Any]] = await asyncio.gather(*futures)
            for answer in answers:
                self._check_worker(answer)
        except BaseException as exc:
            await self._retire(pool, kill=True)
            if isinstance(exc, ModelLoadError):
                raise
            if isinstance(exc, TimeoutError):
                raise ModelLoadError(
                    self._file, f"workers not ready within {self._start_timeout_s} s"
                ) from None
            if isinstance(exc, BrokenProcessPool):
                raise ModelLoadError(self._file, "a worker process died while loading the model") from None
            raise
        return pool

    def _check_worker(self, answer: dict[str, Any]) -> None:
        if answer["error"]:
            raise ModelLoadError(self._file, f"cannot be loaded in a worker: {answer['error']}")
        spec = self.spec
        if answer["n_features"] not in (-1, len(spec.features)):
            raise ModelLoadError(
                self._file,
                f"the model takes {answer['n_features']} features, the manifest lists {len(spec.features)}",
            )
        if spec.task == "classification":
            if not answer["has_predict_proba"]:
                raise ModelLoadError(self._file, "a classifier without predict_proba")
            if answer["n_classes"] != len(spec.labels):
                raise ModelLoadError(
                    self._file,
                    f"the model has {answer['n_classes']} classes, the manifest {len(spec.labels)} labels",
                )

    async def start(self, *, wait: bool = True) -> None:
        """Start the workers; with wait=False return at once, and batches wait until they are up."""
        if not wait:
            self._restart_task = asyncio.create_task(self._restart(None, kill=False))
            return
        self._pool = await self._spawn()
        self._ready.set()

    @property
    def is_ready(self) -> bool:
        """Workers are up with the model loaded (False while starting, restarting or failing)."""
        return self._ready.is_set() and self._failure is None and self._pool is not None

    def _recycle(self, generation: int, *, kill: bool) -> None:
        """Replace the pool once, however many batches noticed the same broken pool."""
        if generation != self._generation or self._closing:
            return
        self._generation += 1
        self.restarts += 1
        self._ready.clear()
        old, self._pool = self._pool, None
        self._restart_task = asyncio.create_task(self._restart(old, kill=kill))

    async def _restart(self, old: ProcessPoolExecutor | None, *, kill: bool) -> None:
        if old is not None:
            await self._retire(old, kill=kill)
        attempt = 0
        while not self._closing:
            try:
                self._pool = await self._spawn()
            except ModelLoadError as exc:
                # Callers get ModelWorkerCrashed at once rather than waiting on a pool that may
                # never come back; the restart keeps trying in the background.
                self._failure = str(exc)
                self._ready.set()
                delay = RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)]
                log.error(
                    "model %s: worker pool restart failed (%s); retrying in %s s", self.spec.name, exc, delay
                )
                attempt += 1
                await asyncio.sleep(delay)
                continue
            self._failure = None
            self._ready.set()
            if old is None:
                log.info("model %s: worker pool started", self.spec.name)
            else:
                log.warning("model %s: worker pool replaced (restart %d)", self.spec.name, self.restarts)
            return

    @staticmethod
    def _processes(pool: ProcessPoolExecutor) -> list[BaseProcess]:
        # ProcessPoolExecutor has no public way to reach or stop its workers before Python 3.14
        # (`kill_workers`); `_processes` is its pid -> Process map (None once shut down).
        return list((pool._processes or {}).values())

    async def _retire(self, pool: ProcessPoolExecutor, *, kill: bool) -> None:
        """Shut a pool down (killing its workers first when they may be stuck) and remember them."""
        processes = self._processes(pool)
        self._retired = [p for p in self._retired if p.is_alive()] + processes
        if kill:
            for process in processes:
                with contextlib.suppress(Exception):
                    process.kill()
        await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    # --- serving ----------------------------------------------------------------------------------

    async def wait_ready(self) -> bool:
        await self._ready.wait()
        return self._failure is None and self._pool is not None

    async def run(self, x: np.ndarray, hard_timeout_s: float) -> np.ndarray:
        generation, pool = self._generation, self._pool
        if pool is None:
            raise ModelWorkerCrashed(self.spec.name)
        try:
            future: Future[np.ndarray] = pool.submit(worker.predict, x, self.spec.task)
        except (BrokenProcessPool, RuntimeError):
            self._recycle(generation, kill=False)
            raise ModelWorkerCrashed(self.spec.name) from None
        try:
            async with asyncio.timeout(hard_timeout_s):
                return await asyncio.wrap_future(future)
        except TimeoutError:
            log.error(
                "model %s: a batch of %d rows ran past the hard limit of %.1f s; recycling the worker pool",
                self.spec.name,
                len(x),
                hard_timeout_s,
            )
            self._recycle(generation, kill=True)
            raise PredictionTimeout(self.spec.name, self.spec.timeout_ms) from None
        except BrokenProcessPool:
            log.error("model %s: a worker process died; replacing the pool", self.spec.name)
            self._recycle(generation, kill=False)
            raise ModelWorkerCrashed(self.spec.name) from None

    def answered(self) -> None:
        return None

    def worker_pids(self) -> list[int]:
        pool = self._pool
        return sorted(p.pid for p in self._processes(pool) if p.pid is not None) if pool else []

    async def close(self, *, force: bool = False) -> None:
        self._closing = True
        if self._restart_task is not None:
            self._restart_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restart_task
        pool, self._pool = self._pool, None
        if pool is not None:
            # shutdown(wait=True) lets queued batches finish, then joins every worker process.
            await self._retire(pool, kill=force)
        for process in self._retired:
            await asyncio.to_thread(process.join, 5.0)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, 5.0)
        self._retired.clear()
