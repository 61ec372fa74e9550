"""Bring your own model: `python -m app.cli models add FILE --name N --version V`.

The file is inspected (its format from its name, its input width, its classes where it carries
them), loaded and run once on a row of zeros by the runtime that will serve it, hashed, copied into
the model directory and entered in the manifest, which is validated whole before it is written
(atomically, keeping the mode of the file it replaces: 0644 for a new one). A name, version or
file that cannot be served is refused with one line saying why (`ModelLoadError`); nothing is
copied or written then.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.ml.errors import ModelLoadError
from app.ml.manifest import MANIFEST_NAME, Manifest, ModelSpec, load_manifest
from app.ml.names import name_problem, version_problem

FORMATS = {".onnx": "onnx", ".skops": "skops"}
# A new file's mode (the manifest and a replaced file keep theirs): readable by a service that
# runs as another user than the one who added the model.
NEW_FILE_MODE = 0o644
# What a new entry gets unless the manifest is edited afterwards (docs/models.md).
DEFAULTS: dict[str, Any] = {
    "batching": {"max_batch_size": 64, "max_batch_wait_ms": 2},
    "timeout_ms": 1000,
    "max_queue": 512,
    "log_inputs": False,
}


@dataclass(frozen=True)
class Found:
    """What the file says about itself."""

    width: int | None
    labels: tuple[str, ...] | None  # None: a regressor, or a classifier that names no classes
    classifier: bool
    feature_names: tuple[str, ...] | None
    model: Any = None  # a skops file's loaded object, run once before the entry is written


def add_model(
    model_dir: Path,
    source: Path,
    *,
    name: str,
    version: str,
    features: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    trusted_types: Sequence[str] = (),
    description: str = "",
) -> ModelSpec:
    """Inspect, run once, copy and enter `source` in `model_dir`'s manifest; the new entry."""
    where = str(source)
    _check_names(name, version, labels, where)
    suffix = source.suffix.lower()
    if suffix not in FORMATS:
        raise ModelLoadError(
            where,
            "only ONNX (.onnx) and skops (.skops) files are served; a pickle or joblib file runs "
            "arbitrary code when loaded: convert it with skl2onnx or save it with skops.io.dump",
        )
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise ModelLoadError(where, f"cannot be read ({exc.strerror})") from None
    fmt = FORMATS[suffix]
    found = _inspect_onnx(data, where) if fmt == "onnx" else _inspect_skops(data, where, trusted_types)
    names = _feature_names(found, features, where)
    classes = tuple(labels) if labels else found.labels
    if found.classifier and not classes:
        raise ModelLoadError(where, "a classifier that names no classes: pass --labels in its output order")
    manifest = load_manifest(model_dir)
    listed = {(m.name, m.version) for m in manifest.models} | {r.key for r in manifest.rejected}
    if (name, version) in listed:
        raise ModelLoadError(where, f"the manifest already serves {name} {version}")
    target = f"{name}-{version}{suffix}"
    entry = {
        "name": name,
        "version": version,
        "task": "classification" if found.classifier else "regression",
        "format": fmt,
        "file": target,
        "sha256": hashlib.sha256(data).hexdigest(),
        "executor": "thread" if fmt == "onnx" else "process",
        "features": [{"name": feature, "type": "float"} for feature in names],
        "labels": list(classes or ()) if found.classifier else [],
        "trusted_types": list(trusted_types) if fmt == "skops" else [],
        "description": description,
        **DEFAULTS,
    }
    try:
        spec = ModelSpec.model_validate(entry)
    except ValueError as exc:
        raise ModelLoadError(where, _first_error(exc)) from None
    _run_once(spec, data, source, found.model)
    # Appended to the manifest as written: the model's other versions stay listed (a fresh
    # deployment serves the first; a running one loads this one when an admin asks,
    # app.services.model_fleet), and so do entries this version of the code sets aside.
    path = model_dir / MANIFEST_NAME
    document = json.loads(path.read_bytes())
    raw = {**document, "models": [*document["models"], entry]}
    try:
        Manifest.parse(raw)
    except ValueError as exc:
        raise ModelLoadError(where, _first_error(exc)) from None
    copied = _copy(data, model_dir / target, where)
    try:
        _write_atomically(path, json.dumps(raw, indent=2) + "\n")
    except OSError as exc:
        if copied:
            (model_dir / target).unlink(missing_ok=True)
        raise ModelLoadError(str(path), f"cannot be written ({exc.strerror or exc})") from None
    return spec


def _check_names(name: str, version: str, labels: Sequence[str] | None, where: str) -> None:
    """The rule for names and versions (app.ml.names), before anything is read."""
    problem = name_problem(name)
    if problem is not None:
        raise ModelLoadError(where, f"--name {name!r}: {problem}")
    problem = version_problem(version)
    if problem is not None:
        raise ModelLoadError(where, f"--version {version!r}: {problem}")
    if labels:
        repeated = sorted({label for label in labels if list(labels).count(label) > 1})
        if repeated:
            twice = ", ".join(map(repr, repeated))
            raise ModelLoadError(where, f"--labels names {twice} more than once: each class needs its own")


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    return str(exc)


def _feature_names(found: Found, given: Sequence[str] | None, where: str) -> tuple[str, ...]:
    if given:
        if found.width is not None and len(given) != found.width:
            raise ModelLoadError(
                where, f"the model takes {found.width} features, --features names {len(given)}"
            )
        return tuple(given)
    if found.feature_names:
        return found.feature_names
    if found.width is None:
        raise ModelLoadError(where, "the model does not say how many features it takes: pass --features")
    return tuple(f"x{i}" for i in range(found.width))


def _inspect_onnx(data: bytes, where: str) -> Found:
    import onnxruntime as ort  # noqa: PLC0415 - the command alone loads it

    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises several pybind types; all mean "bad file"
        raise ModelLoadError(where, f"not a loadable ONNX model: {exc}") from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 2:
        raise ModelLoadError(where, "the model must take one input tensor of shape [rows, features]")
    width = inputs[0].shape[1] if isinstance(inputs[0].shape[1], int) else None
    outputs = [o.name for o in session.get_outputs()]
    classifier = "probabilities" in outputs or len(outputs) >= 2
    return Found(width, _onnx_class_labels(data) if classifier else None, classifier, None)


def _onnx_class_labels(data: bytes) -> tuple[str, ...] | None:
    """The class labels skl2onnx and other converters store on the classifier node, if any."""
    import onnx  # noqa: PLC0415 - the command alone loads it (a main dependency: the image has it)

    model = onnx.load_from_string(data)
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.name == "classlabels_strings" and attribute.strings:
                return tuple(label.decode() for label in attribute.strings)
            if attribute.name in {"classlabels_int64s", "classlabels_ints"} and attribute.ints:
                return tuple(str(label) for label in attribute.ints)
    return None


def _inspect_skops(data: bytes, where: str, trusted_types: Sequence[str]) -> Found:
    import skops.io  # noqa: PLC0415 - the command alone loads it

    try:
        untrusted = [t for t in skops.io.get_untrusted_types(data=data) if t not in trusted_types]
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not a skops file
        raise ModelLoadError(where, f"not a skops file: {exc}") from None
    if untrusted:
        raise ModelLoadError(
            where, f"types not trusted yet (review them, then pass --trust for each): {', '.join(untrusted)}"
        )
    try:
        model = skops.io.loads(data, trusted=list(trusted_types))
    except Exception as exc:  # noqa: BLE001 - as above
        raise ModelLoadError(where, f"cannot be loaded: {exc}") from None
    classifier = hasattr(model, "predict_proba")
    if not classifier and not hasattr(model, "predict"):
        raise ModelLoadError(where, "the object has neither predict_proba nor predict")
    width = getattr(model, "n_features_in_", None)
    names = getattr(model, "feature_names_in_", None)
    classes = getattr(model, "classes_", None)
    return Found(
        int(width) if width is not None else None,
        tuple(str(c) for c in classes) if classifier and classes is not None else None,
        classifier,
        tuple(str(n) for n in names) if names is not None else None,
        model,
    )


def _run_once(spec: ModelSpec, data: bytes, source: Path, model: Any) -> None:
    """One row of zeros through what will serve it (the ONNX runtime, or the skops object as a
    worker process calls it): a mismatch fails here, not at start-up or at a request."""
    if spec.format == "onnx":
        from app.ml.runtimes import OnnxRuntime  # noqa: PLC0415 - imports ONNX Runtime

        with ThreadPoolExecutor(1) as pool:
            OnnxRuntime(spec, data, str(source), pool, 1)  # runs a zero row in its constructor
        return
    zeros = np.zeros((1, len(spec.features)), dtype=np.float32)
    try:
        if spec.task == "classification":
            out = np.asarray(model.predict_proba(zeros), dtype=np.float64)
        else:
            out = np.asarray(model.predict(zeros), dtype=np.float64).reshape(-1, 1)
    except Exception as exc:  # noqa: BLE001 - any failure here means the file cannot serve
        raise ModelLoadError(str(source), f"a test prediction failed: {exc}") from None
    expected = len(spec.labels) if spec.task == "classification" else 1
    if out.shape != (1, expected):
        raise ModelLoadError(
            str(source), f"a test prediction has shape {out.shape[1:]}, expected ({expected},)"
        )


def _copy(data: bytes, target: Path, where: str) -> bool:
    """The file in the model directory; True if it was not there before."""
    existed = target.exists()
    if existed and target.read_bytes() != data:
        raise ModelLoadError(where, f"{target.name} already exists in the model directory with other content")
    try:
        _write_atomically(target, data)
    except OSError as exc:
        raise ModelLoadError(str(target), f"cannot be written ({exc.strerror or exc})") from None
    return not existed


def _write_atomically(path: Path, content: str | bytes) -> None:
    """Written aside, then renamed over `path`, with the mode `path` had (NEW_FILE_MODE if new):
    mkstemp's 0600 would hide it from a service running as another user."""
    raw = content.encode() if isinstance(content, str) else content
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = NEW_FILE_MODE
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as file:
            file.write(raw)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
