"""Bring your own model: `python -m app.cli models add FILE --name N --version V`.

The file is inspected by its runtime kind (app.ml.runtimes, found by the file's name: its input
width, its classes where it carries them), loaded and run once on a row of zeros as it will be
served, hashed, copied into the model directory and entered in the manifest, which is validated
whole before it is written (atomically, keeping the mode of the file it replaces: 0644 for a new
one). A name, version or file that cannot be served is refused with one line saying why
(`ModelLoadError`); nothing is copied or written then.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from app.ml import worker
from app.ml.drift import make_reference
from app.ml.errors import ModelLoadError
from app.ml.formats import RUNTIMES, RuntimeKind, by_suffix
from app.ml.manifest import MANIFEST_NAME, Manifest, ModelSpec, Reference, load_manifest
from app.ml.names import name_problem, version_problem
from app.ml.runtimes.base import Found, ThreadContext, ThreadRuntime, implementation, in_processes, in_threads

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
# A reference sample smaller than this has no meaningful deciles.
MIN_REFERENCE_ROWS = 100


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
    aliases: Collection[str] = (),
    reference: Path | None = None,
) -> ModelSpec:
    """Inspect, run once, copy and enter `source` in `model_dir`'s manifest; the new entry.
    `aliases`: the model's aliases in the fleet's stored state (the manifest holds none), which no
    version may be named like: `/versions/{ref}` names either. `reference`: a CSV file of sample
    rows (training or validation), its header naming every feature, scored by the model to make
    the entry's reference (drift: app.ml.drift)."""
    where = str(source)
    _check_names(name, version, labels, where)
    if version in aliases:
        raise ModelLoadError(
            where,
            f"--version {version!r}: model {name!r} has an alias of that name (GET "
            f"/api/v1/models/{name}/aliases); a version needs another name",
        )
    suffix = source.suffix.lower()
    kind = by_suffix(suffix)
    if kind is None:
        *others, last = [f"{k.title} ({k.suffix})" for k in RUNTIMES.values()]
        served = f"{', '.join(others)} and {last}" if others else last
        raise ModelLoadError(
            where,
            f"only {served} files are served; a pickle or joblib file runs "
            "arbitrary code when loaded: convert it with skl2onnx or save it with skops.io.dump",
        )
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise ModelLoadError(where, f"cannot be read ({exc.strerror})") from None
    found = implementation(kind).inspect(data, where, trusted_types)
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
        "format": kind.format,
        "file": target,
        "sha256": hashlib.sha256(data).hexdigest(),
        "executor": kind.executor,
        "features": [{"name": feature, "type": "float"} for feature in names],
        "labels": list(classes or ()) if found.classifier else [],
        "trusted_types": list(trusted_types) if kind.trusts_types else [],
        "description": description,
        **DEFAULTS,
    }
    try:
        spec = ModelSpec.model_validate(entry)
    except ValueError as exc:
        raise ModelLoadError(where, _first_error(exc)) from None
    score = _run_once(spec, kind, data, source, found)
    if reference is not None:
        rows = _reference_rows(reference, names)
        entry["reference"] = _reference(spec, score, rows, str(reference)).model_dump(mode="json")
        spec = ModelSpec.model_validate(entry)
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


def _run_once(
    spec: ModelSpec, kind: RuntimeKind, data: bytes, source: Path, found: Found
) -> Callable[[np.ndarray], np.ndarray]:
    """One row of zeros through what will serve it (a thread kind's runtime as built for the
    registry, a process kind's object as a worker process computes with it): a mismatch fails
    here, not at start-up or at a request. Returns what scored it, for the reference rows."""
    if kind.executor == "thread":
        with ThreadPoolExecutor(1) as pool:
            # Built as the registry builds it, which runs a row of zeros.
            runtime = in_threads(kind).build(spec, data, str(source), ThreadContext(pool, 1))
        if not isinstance(runtime, ThreadRuntime):  # pragma: no cover - every thread kind is one
            raise TypeError(f"{kind.format}: not a ThreadRuntime")
        return runtime.compute
    model = found.model if found.model is not None else in_processes(kind).load(data, spec.trusted_types)
    zeros = np.zeros((1, len(spec.features)), dtype=np.float32)
    try:
        out = worker.compute(model, zeros, spec.task)
    except Exception as exc:  # noqa: BLE001 - any failure here means the file cannot serve
        raise ModelLoadError(str(source), f"a test prediction failed: {exc}") from None
    expected = len(spec.labels) if spec.task == "classification" else 1
    if out.shape != (1, expected):
        raise ModelLoadError(
            str(source), f"a test prediction has shape {out.shape[1:]}, expected ({expected},)"
        )
    return lambda x: worker.compute(model, x, spec.task)


def _reference_rows(path: Path, names: Sequence[str]) -> np.ndarray:
    """A CSV file's rows in feature order: its header names every feature (other columns are
    ignored), each of its values a number."""
    where = str(path)
    try:
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.reader(file)
            header = next(reader, [])
            missing = [name for name in names if name not in header]
            if missing:
                raise ModelLoadError(where, f"--reference: the header names no column {missing[0]!r}")
            columns = [header.index(name) for name in names]
            rows = []
            for line, record in enumerate(reader, start=2):
                try:
                    rows.append([float(record[c]) for c in columns])
                except (ValueError, IndexError):
                    raise ModelLoadError(where, f"--reference: line {line} is not a row of numbers") from None
    except OSError as exc:
        raise ModelLoadError(where, f"--reference: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ModelLoadError(where, "--reference: not a UTF-8 CSV file") from None
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(names))


def _reference(
    spec: ModelSpec, score: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, where: str
) -> Reference:
    """The version's reference: `rows` (`_reference_rows`: one column per feature) and the model's
    answers to them, binned (app.ml.drift)."""
    if len(rows) < MIN_REFERENCE_ROWS:
        raise ModelLoadError(
            where, f"--reference: {len(rows)} rows; at least {MIN_REFERENCE_ROWS} make its deciles"
        )
    if not np.isfinite(rows).all():
        raise ModelLoadError(where, "--reference: every value must be a finite number")
    x = rows.astype(np.float32)
    try:
        outputs = score(x)
    except Exception as exc:  # noqa: BLE001 - the model could not score the sample
        raise ModelLoadError(where, f"--reference: the model could not score the rows: {exc}") from None
    return make_reference(spec.task, spec.labels, x, outputs)


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
