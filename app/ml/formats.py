"""The runtime kinds, one entry per manifest `format`: the one table a new model runtime is added to.

An entry says which files it takes (`suffix`, for `models add`), where its models run (`thread`:
the process's shared thread pool; `process`: a pool of worker processes per model version), the
platform name the Open Inference Protocol's metadata gives, and the module implementing it
(`implementation`), which provides (protocols in app.ml.runtimes.base):

- every kind: `inspect(data, where, trusted_types) -> Found`, what `models add` reads of a file;
- a thread kind: `build(spec, data, where, threads) -> Runtime`, the model loaded and checked on a
  row of zeros (subclass `ThreadRuntime` and write `compute`);
- a process kind: `load(data, trusted_types)`, called once in each worker process (app.ml.worker),
  returning an object with scikit-learn's `predict_proba` (a classifier) or `predict`.

The implementation (in the package app.ml.runtimes) is imported by name only when a model of its
kind is loaded or added: this module imports nothing but the standard library, so the manifest
reads the table and a web worker whose models are all remote imports no runtime
(tests/tier/test_web_worker.py). README.md, "Add a model runtime", lists every file a new kind
touches.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

Placement = Literal["thread", "process"]
# The platform of a model served by another Open Inference Protocol server (no format here).
REMOTE_PLATFORM = "remote_oip"


@dataclass(frozen=True, slots=True)
class RuntimeKind:
    """How one format is served: see the module's docstring."""

    format: str
    title: str  # how messages name it ("ONNX")
    suffix: str  # the file name's ending `models add` recognises it by (".onnx"), lower case
    executor: Placement
    platform: str
    implementation: str  # a module path, imported on first use
    # The manifest entry's `trusted_types` apply (types the loader may build, as skops asks).
    trusts_types: bool = False
    # Modules the worker processes' forkserver imports once (process kinds): a replacement
    # worker then starts in milliseconds (app.ml.worker_preload).
    preload: tuple[str, ...] = ()

    def module(self) -> ModuleType:
        """The implementation, imported now (typed views: app.ml.runtimes.base.implementation)."""
        return importlib.import_module(self.implementation)


RUNTIMES: dict[str, RuntimeKind] = {
    kind.format: kind
    for kind in (
        # ONNX Runtime releases the GIL: a thread is enough, and a run past its hard limit is
        # aborted between kernels.
        RuntimeKind(
            format="onnx",
            title="ONNX",
            suffix=".onnx",
            executor="thread",
            platform="onnxruntime_onnx",
            implementation="app.ml.runtimes.onnx",
        ),
        # scikit-learn holds the GIL and cannot be interrupted: worker processes, recycled past
        # the hard limit; it is imported only there.
        RuntimeKind(
            format="skops",
            title="skops",
            suffix=".skops",
            executor="process",
            platform="sklearn_skops",
            implementation="app.ml.runtimes.skops",
            trusts_types=True,
            preload=("skops.io", "sklearn.ensemble", "sklearn.linear_model", "sklearn.tree"),
        ),
    )
}


def runtime_kind(fmt: str) -> RuntimeKind:
    """The entry of a format the manifest accepted (KeyError for any other)."""
    return RUNTIMES[fmt]


def by_suffix(suffix: str) -> RuntimeKind | None:
    """The kind whose files end with `suffix` (any case), if any."""
    return next((kind for kind in RUNTIMES.values() if kind.suffix == suffix.lower()), None)


def platform(fmt: str | None) -> str:
    """The Open Inference Protocol platform name of a model's format (None: a remote model)."""
    if fmt is None:
        return REMOTE_PLATFORM
    kind = RUNTIMES.get(fmt)
    return kind.platform if kind is not None else fmt


def known() -> str:
    """The formats, for messages: "onnx, skops"."""
    return ", ".join(RUNTIMES)
