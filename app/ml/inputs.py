"""Input validation: JSON rows (arrays in feature order or objects keyed by name) to a float32 matrix.

Validation is done here, not by a lax Pydantic schema, because lax mode turns `true` into 1.0 and
`"3"` into 3.0; a model must never see a value the client did not mean as a number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from app.ml.errors import BatchTooLarge, FieldError, InvalidInput
from app.ml.manifest import ModelSpec

# Every model takes float32 (ONNX FloatTensorType; scikit-learn trees cast to float32 anyway), so a
# finite float64 beyond this range would silently become infinity.
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Stop collecting after this many problems: a 4096-row garbage batch must not build a huge error.
MAX_ERRORS = 20


class _Errors:
    """Collects field errors up to MAX_ERRORS."""

    def __init__(self) -> None:
        self.items: list[FieldError] = []
        self.truncated = False

    def add(self, field: str, message: str) -> None:
        if len(self.items) < MAX_ERRORS:
            self.items.append((field, message))
        else:
            self.truncated = True

    @property
    def full(self) -> bool:
        return len(self.items) >= MAX_ERRORS

    def raise_if_any(self, spec: ModelSpec) -> None:
        if not self.items:
            return
        items = list(self.items)
        if self.truncated:
            items.append(("", f"checking stopped after the first {MAX_ERRORS} problems"))
        raise InvalidInput(spec.name, items, spec.feature_names)


def _number(value: object) -> float | str:
    """The value as a float, or a message saying why it is not acceptable."""
    # `type(...) is` rather than isinstance: bool is a subclass of int and must be refused.
    kind = type(value)
    if kind is float or kind is int or isinstance(value, np.floating | np.integer):
        try:
            number = float(value)  # type: ignore[arg-type]  # int/float/numpy scalar, checked above
        except OverflowError:
            return "is out of range for a 32-bit float"
        if not math.isfinite(number):
            return "must be a finite number (NaN and infinity are refused)"
        if abs(number) > FLOAT32_MAX:
            return "is out of range for a 32-bit float"
        return number
    if kind is bool or isinstance(value, np.bool_):
        return "must be a number, got a boolean"
    if value is None:
        return "must be a number, got null"
    if isinstance(value, str):
        return "must be a number, got a string"
    return f"must be a number, got {json_type(value)}"


def json_type(value: object) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, Sequence):
        return "an array"
    return type(value).__name__


def _expected(spec: ModelSpec) -> str:
    return ", ".join(spec.feature_names)


def _fill_row(spec: ModelSpec, row: object, path: str, out: np.ndarray, errors: _Errors) -> None:
    names = spec.feature_names
    if isinstance(row, Mapping):
        unknown = [key for key in row if key not in names]
        for key in unknown:
            errors.add(f"{path}.{key}", f"unknown feature; expected: {_expected(spec)}")
        for j, name in enumerate(names):
            if name not in row:
                errors.add(f"{path}.{name}", f"missing feature; expected: {_expected(spec)}")
                continue
            number = _number(row[name])
            if isinstance(number, str):
                errors.add(f"{path}.{name}", number)
            else:
                out[j] = number
        return
    if isinstance(row, Sequence) and not isinstance(row, str | bytes):
        if len(row) != len(names):
            errors.add(
                path,
                f"expected {len(names)} values in this order: {_expected(spec)}; got {len(row)}",
            )
            return
        for j, value in enumerate(row):
            number = _number(value)
            if isinstance(number, str):
                errors.add(f"{path}.{j}", f"{number} ({names[j]})")
            else:
                out[j] = number
        return
    errors.add(
        path,
        f"must be an array of {len(names)} numbers in feature order or an object keyed by feature "
        f"name, got {json_type(row)}; expected: {_expected(spec)}",
    )


def _from_array(spec: ModelSpec, rows: np.ndarray, field: str) -> np.ndarray:
    """Fast path for in-process callers (benchmarks, tests) that already hold a numeric matrix."""
    n = len(spec.features)
    if rows.ndim != 2 or rows.shape[1] != n or rows.dtype.kind not in "iuf":
        raise InvalidInput(
            spec.name,
            [(field, f"expected a numeric matrix of shape (rows, {n}); got {rows.dtype} {rows.shape}")],
            spec.feature_names,
        )
    matrix = rows.astype(np.float64, copy=False)
    bad = ~np.isfinite(matrix) | (np.abs(matrix) > FLOAT32_MAX)
    if bad.any():
        errors = _Errors()
        for i, j in zip(*np.nonzero(bad), strict=True):
            errors.add(f"{field}.{i}.{j}", f"must be a finite 32-bit float ({spec.feature_names[j]})")
        errors.raise_if_any(spec)
    return matrix.astype(np.float32)


def validate_rows(spec: ModelSpec, rows: object, *, field: str = "rows") -> np.ndarray:
    """A (rows, features) float32 matrix, or InvalidInput / BatchTooLarge naming every bad field."""
    if isinstance(rows, np.ndarray):
        if rows.ndim >= 1 and len(rows) > spec.max_batch_size:
            raise BatchTooLarge(spec.name, len(rows), spec.max_batch_size, field)
        if rows.ndim >= 1 and len(rows) == 0:
            raise InvalidInput(spec.name, [(field, "at least one row is required")], spec.feature_names)
        return _from_array(spec, rows, field)
    if isinstance(rows, str | bytes | Mapping) or not isinstance(rows, Sequence):
        raise InvalidInput(
            spec.name,
            [(field, f"must be an array of rows, got {json_type(rows)}")],
            spec.feature_names,
        )
    if not rows:
        raise InvalidInput(spec.name, [(field, "at least one row is required")], spec.feature_names)
    if len(rows) > spec.max_batch_size:
        raise BatchTooLarge(spec.name, len(rows), spec.max_batch_size, field)
    out = np.empty((len(rows), len(spec.features)), dtype=np.float32)
    errors = _Errors()
    for i, row in enumerate(rows):
        _fill_row(spec, row, f"{field}.{i}", out[i], errors)
        if errors.full and i + 1 < len(rows):
            errors.truncated = True
            break
    errors.raise_if_any(spec)
    return out


def validate_features(spec: ModelSpec, features: object, *, field: str = "features") -> np.ndarray:
    """One row (array in feature order or object keyed by name) as a (1, features) float32 matrix."""
    out = np.empty((1, len(spec.features)), dtype=np.float32)
    errors = _Errors()
    _fill_row(spec, features, field, out[0], errors)
    errors.raise_if_any(spec)
    return out


# --- Open Inference Protocol tensors -------------------------------------------------------------

# The one input tensor of every model, by the name its metadata (`GET /v2/models/{name}`) gives and
# requests must use (Triton, too, refuses an input it does not declare; MLServer's scikit-learn
# runtime reads a lone input whatever its name). tritonclient's users copy it from the metadata;
# the web tier's remote entries send it (app.ml.manifest.RemoteSpec.input, `input` by default).
INPUT_TENSOR = "input"

# Inclusive ranges of the protocol's integer datatypes (and FP16's largest finite value): a value
# outside its declared datatype is refused, never wrapped or saturated.
DATATYPE_RANGES: dict[str, tuple[int | float, int | float]] = {
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
    "FP16": (-65504.0, 65504.0),
}
# float64 holds every integer up to this exactly; past it the 64-bit bounds are checked exactly on
# the values as sent (only then: a rare, already suspicious input).
_EXACT_IN_FLOAT64 = 2**53


class TensorError(ValueError):
    """A tensor whose shape, nesting or values do not match what it declares; the message names it."""


def _nesting_problem(data: object, shape: list[int], depth: int = 0) -> str | None:
    """Why `data` is not nested exactly as `shape` says (the slow path: only for refused input)."""
    if depth == len(shape):
        return "is nested deeper than its shape" if isinstance(data, list) else None
    if not isinstance(data, list):
        return f"has a value where its shape needs an array of {shape[depth]}"
    if len({isinstance(item, list) for item in data}) == 2:
        return "mixes values and arrays in one array"
    if len(data) != shape[depth]:
        return f"has an array of {len(data)} where its shape needs {shape[depth]}"
    for item in data:
        problem = _nesting_problem(item, shape, depth + 1)
        if problem is not None:
            return problem
    return None


def tensor_rows(name: str, datatype: str, shape: list[int], data: list[Any], width: int) -> list[Any]:
    """The rows of an input tensor of shape [rows, width] whose `data` is row-major, either flat
    (rows * width values) or nested exactly as the shape; values within `datatype`. TensorError
    otherwise. The values themselves are left as sent: `validate_rows` refuses booleans, strings
    and nulls by name afterwards.

    One numpy conversion decides the nesting (its `ndim`/`shape`) and the range (min, max, and for
    integer types "whole"), with no Python loop over the values on well-formed input."""
    if len(shape) != 2 or shape[1] != width or shape[0] < 1:
        raise TensorError(
            f"Input {name!r} must have shape [rows, {width}] (a model takes rows of {width} "
            f"features); got {shape}."
        )
    rows = shape[0]
    try:
        values: np.ndarray | None = np.array(data, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        values = None  # uneven nesting, or values that are no numbers: decided below
    if values is None or values.ndim not in (1, 2):
        flat = not any(isinstance(v, list) for v in data)
        problem = None if flat else _nesting_problem(data, shape)
        if problem is not None:
            raise TensorError(
                f"Input {name!r} {problem}: data must be flat (row-major) or nested as its shape {shape}."
            )
        if flat and len(data) != rows * width:
            raise TensorError(f"Input {name!r} has {len(data)} values; shape {shape} needs {rows * width}.")
        return data if not flat else [data[i * width : (i + 1) * width] for i in range(rows)]
    if values.ndim == 2:
        if values.shape != (rows, width):
            raise TensorError(
                f"Input {name!r} has {values.size} values nested as {list(values.shape)} but its shape is "
                f"{shape}: data must be flat (row-major) or nested as its shape."
            )
    elif values.size != rows * width:
        raise TensorError(f"Input {name!r} has {values.size} values; shape {shape} needs {rows * width}.")
    _check_range(name, datatype, values, data)
    return data if values.ndim == 2 else [data[i * width : (i + 1) * width] for i in range(rows)]


def _check_range(name: str, datatype: str, values: np.ndarray, data: list[Any]) -> None:
    bounds = DATATYPE_RANGES.get(datatype)
    if bounds is None or values.size == 0:
        return
    low, high = bounds
    outside = f"Input {name!r} has values outside {datatype} ({low} to {high})."
    # NaN (a JSON null became one) is left to validate_rows, which names it.
    smallest = float(np.nanmin(values, initial=np.inf))
    largest = float(np.nanmax(values, initial=-np.inf))
    if datatype in ("INT64", "UINT64") and max(-smallest, largest) >= _EXACT_IN_FLOAT64:
        # Past 2**53 float64 rounds (2**63 - 1 reads as 2**63): compare the values as sent.
        flat = data if values.ndim == 1 else [v for row in data for v in row]
        if any(isinstance(v, int | float) and not low <= v <= high for v in flat):
            raise TensorError(outside)
    elif smallest < low or largest > high:
        raise TensorError(outside)
    if datatype != "FP16" and not np.array_equal(values, np.trunc(values), equal_nan=True):
        raise TensorError(
            f"Input {name!r} has values that are not whole numbers; its datatype is {datatype}."
        )
