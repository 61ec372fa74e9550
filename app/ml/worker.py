"""Code that runs inside a process-pool worker: load a model once, then answer batches.

The model is loaded by its runtime kind's `load` (the module `init` is given, app.ml.runtimes):
skops today. The web process imports this module only to name its functions for the pool; the
kind's module, and scikit-learn with it, are imported inside `init`, in the workers.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


class _Loaded:
    """The worker's one model, set by `init` (the pool initializer) and never replaced."""

    model: Any = None
    error: str | None = None


# How often a worker checks that the process that owns its pool is still alive.
OWNER_CHECK_S = 1.0


def init(  # noqa: PLR0917 - a pool initializer takes its arguments by position
    implementation: str,
    path: str,
    sha256: str,
    trusted_types: list[str],
    nice: int = 0,
    owner: int | None = None,
) -> None:
    """Pool initializer: load the model once per worker with the `load` of the module
    `implementation` names, so no request ever ships the model."""
    # Ctrl-C in a terminal reaches the whole process group; the parent decides when workers stop,
    # so in-flight batches finish during a graceful shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if owner is not None:
        _exit_with(owner)
    if nice:
        # Below the web process: a core both want goes to the event loop first, so light requests
        # keep their latency while heavy predictions run (measured in docs/performance.md).
        os.nice(nice)
    try:
        data = Path(path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise ValueError(f"sha256 mismatch (manifest {sha256[:12]}..., file {digest[:12]}...)")
        # Imported here, not at the top: the web process imports this module too and must not
        # load scikit-learn (memory, start-up time).
        _Loaded.model = importlib.import_module(implementation).load(data, trusted_types)
    except Exception as exc:  # noqa: BLE001 - any failure is reported to the parent by `describe`
        _Loaded.error = f"{type(exc).__name__}: {exc}"


def _exit_with(owner: int) -> None:
    """End this worker once the process that owns its pool is gone. The worker's parent is the
    forkserver, not the owner, so nothing else tells it: an owner killed with SIGKILL (no shutdown
    code runs) would leave the workers, and the forkserver they keep alive, running for good."""

    def watch() -> None:
        while True:
            time.sleep(OWNER_CHECK_S)
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # alive, under another user (never here, but not gone)
                continue

    threading.Thread(target=watch, name="owner-watch", daemon=True).start()


def describe() -> dict[str, Any]:
    """What the parent checks at start-up: the model loaded, with the expected shape."""
    model = _Loaded.model
    if model is None:
        return {"pid": os.getpid(), "error": _Loaded.error or "model not loaded", "nice": os.nice(0)}
    classes = getattr(model, "classes_", None)
    return {
        "pid": os.getpid(),
        "error": None,
        "nice": os.nice(0),
        "n_features": int(getattr(model, "n_features_in_", -1)),
        "n_classes": None if classes is None else len(classes),
        "has_predict_proba": hasattr(model, "predict_proba"),
    }


def predict(x: np.ndarray, task: str) -> np.ndarray:
    """A (rows, k) float64 matrix: class probabilities for a classifier, one column for a regressor."""
    model = _Loaded.model
    if model is None:
        raise RuntimeError(_Loaded.error or "model not loaded")
    return compute(model, x, task)


def compute(model: Any, x: np.ndarray, task: str) -> np.ndarray:
    """What `predict` computes, for any loaded object (`models add` runs a new file through it)."""
    if task == "classification":
        return np.asarray(model.predict_proba(x), dtype=np.float64)
    return np.asarray(model.predict(x), dtype=np.float64).reshape(-1, 1)
