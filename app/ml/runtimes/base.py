"""What a runtime is to the registry (`Runtime`), what a runtime kind's module provides (the table:
app.ml.formats), what `models add` reads of a file (`Found`), and `ThreadRuntime`, the base of
runtimes run in threads.

Every runtime takes a (rows, features) float32 matrix and returns a (rows, k) float64 matrix
(class probabilities, or one column for a regressor), and enforces a hard time limit per batch.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Self, cast

import numpy as np

from app.ml.errors import ModelLoadError, PredictionTimeout

if TYPE_CHECKING:
    from app.ml.formats import RuntimeKind
    from app.ml.manifest import ModelSpec


class Runtime(Protocol):
    """What the micro-batcher and the registry need from a loaded model version."""

    @property
    def is_ready(self) -> bool:
        """It answers now (False while worker processes start or restart, or a server is down)."""
        ...

    @property
    def restarts(self) -> int:
        """Times its workers were replaced after a crash or a hard timeout (0 without workers)."""
        ...

    async def wait_ready(self) -> bool:
        """Wait while the runtime restarts; False when it cannot run batches right now."""
        ...

    async def run(self, x: np.ndarray, hard_timeout_s: float) -> np.ndarray:
        """Compute one batch, raising PredictionTimeout past `hard_timeout_s` or ModelWorkerCrashed."""
        ...

    def worker_pids(self) -> list[int]:
        """Process ids of its worker processes (empty when it has none)."""
        ...

    def answered(self) -> None:
        """The warm-up row just came back: a runtime that waits for a probe to call itself ready
        may say so now."""
        ...

    async def close(self, *, force: bool = False) -> None:
        """Release the runtime's resources; `force` stops work still running."""
        ...


@dataclass(frozen=True)
class Found:
    """What a model file says about itself, read by `models add` (app.ml.importer)."""

    width: int | None  # features it takes; None: it does not say
    labels: tuple[str, ...] | None  # None: a regressor, or a classifier that names no classes
    classifier: bool
    feature_names: tuple[str, ...] | None
    # A process kind's object as `load` returned it, run once on a row of zeros before the entry
    # is written (None: `models add` calls `load` itself).
    model: Any = None


@dataclass(frozen=True, slots=True)
class ThreadContext:
    """What a thread kind's `build` gets: the pool shared by every thread-run model, and how many
    threads one run may use itself (1: batches already run side by side)."""

    executor: ThreadPoolExecutor
    intra_op_threads: int


class Implementation(Protocol):
    """Every runtime kind's module (`RuntimeKind.implementation`)."""

    def inspect(self, data: bytes, where: str, trusted_types: Sequence[str]) -> Found:
        """What the file says about itself, or ModelLoadError naming `where`."""
        ...


class ThreadImplementation(Implementation, Protocol):
    def build(self, spec: ModelSpec, data: bytes, where: str, threads: ThreadContext) -> Runtime:
        """The model loaded from `data` and checked on a row of zeros, or ModelLoadError."""
        ...


class ProcessImplementation(Implementation, Protocol):
    def load(self, data: bytes, trusted_types: Sequence[str]) -> Any:
        """In a worker process: the model object (with `predict_proba` or `predict`)."""
        ...


def implementation(kind: RuntimeKind) -> Implementation:
    return cast("Implementation", kind.module())


def in_threads(kind: RuntimeKind) -> ThreadImplementation:
    """A thread kind's module (`build`)."""
    return cast("ThreadImplementation", kind.module())


def in_processes(kind: RuntimeKind) -> ProcessImplementation:
    """A process kind's module (`load`)."""
    return cast("ProcessImplementation", kind.module())


class ThreadRuntime(abc.ABC):
    """A model computed by `compute` in the shared thread pool, several batches side by side.

    A batch past its hard limit fails its callers with PredictionTimeout; a plain thread cannot be
    stopped, so it finishes in the background. A runtime that can abort a run overrides `run`
    (OnnxRuntime does).
    """

    is_ready = True
    restarts = 0

    def __init__(self, spec: ModelSpec, executor: ThreadPoolExecutor) -> None:
        self.spec = spec
        self._executor = executor

    @abc.abstractmethod
    def compute(self, x: np.ndarray) -> np.ndarray:
        """One batch, in a pool thread: (rows, features) float32 in, (rows, k) float64 out."""

    def checked(self, where: str) -> Self:
        """Itself once a row of zeros gave the shape the manifest implies, or ModelLoadError: a
        mismatch fails loading (and `models add`) rather than a request."""
        try:
            out = self.compute(np.zeros((1, len(self.spec.features)), dtype=np.float32))
        except Exception as exc:  # noqa: BLE001 - any failure here means the file cannot serve
            raise ModelLoadError(where, f"a test prediction failed: {exc}") from None
        expected = len(self.spec.labels) if self.spec.task == "classification" else 1
        if np.shape(out) != (1, expected):
            raise ModelLoadError(
                where, f"a test prediction has shape {np.shape(out)[1:]}, the manifest implies ({expected},)"
            )
        return self

    async def wait_ready(self) -> bool:
        return True

    async def run(self, x: np.ndarray, hard_timeout_s: float) -> np.ndarray:
        future = asyncio.get_running_loop().run_in_executor(self._executor, self.compute, x)
        try:
            async with asyncio.timeout(hard_timeout_s):
                return await future
        except TimeoutError:
            raise PredictionTimeout(self.spec.name, self.spec.timeout_ms) from None

    def worker_pids(self) -> list[int]:
        return []

    def answered(self) -> None:
        return None

    async def close(self, *, force: bool = False) -> None:  # noqa: ARG002 - Runtime protocol
        # The thread pool is shared by every thread-run model and shut down by the registry.
        return None
