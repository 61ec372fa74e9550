"""The model manifest (`ml_models/manifest.json`): its schema, and reading files with their sha256 checked."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.ml.errors import ModelLoadError

MANIFEST_NAME = "manifest.json"

Task = Literal["classification", "regression"]
ModelFormat = Literal["onnx", "skops"]
Executor = Literal["thread", "process"]


class _Frozen(BaseModel):
    # Unknown keys are refused: a typo in the manifest must fail start-up, not be ignored.
    model_config = ConfigDict(frozen=True, extra="forbid")


class FeatureSpec(_Frozen):
    """One input column, in the order the model expects it."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    type: Literal["float"] = "float"


class BatchingSpec(_Frozen):
    """Micro-batching limits; `max_batch_size` is also the most rows one request may send."""

    max_batch_size: int = Field(ge=1, le=4096)
    max_batch_wait_ms: float = Field(ge=0, le=1000)


class ModelSpec(_Frozen):
    """One served model: what it computes, where its file is, and how it is run."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    version: str = Field(min_length=1, max_length=64)
    task: Task
    format: ModelFormat
    file: str = Field(description="Path relative to the model directory.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    executor: Executor
    features: tuple[FeatureSpec, ...] = Field(min_length=1)
    labels: tuple[str, ...] = Field(
        default=(), description="Class names in the order of the model's probability columns."
    )
    batching: BatchingSpec
    timeout_ms: int = Field(ge=1, le=600_000, description="Time limit per request, queue included.")
    max_queue: int = Field(ge=1, description="Requests that may wait; more are refused at once.")
    log_inputs: bool = Field(description="Whether the prediction log may store the input rows.")
    trusted_types: tuple[str, ...] = Field(default=(), description="skops types to trust on load.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Held-out scores, informative.")
    description: str = ""

    @field_validator("file")
    @classmethod
    def _inside_model_dir(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not value or "\\" in value or path.is_absolute() or ".." in path.parts:
            raise ValueError("must be a relative path inside the model directory")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        if self.task == "classification" and len(self.labels) < 2:
            raise ValueError("a classifier needs at least two labels")
        if self.task == "regression" and self.labels:
            raise ValueError("a regressor has no labels")
        # scikit-learn is imported only in worker processes, so skops files run there; ONNX
        # Runtime releases the GIL, so a thread is enough for it.
        expected: Executor = "process" if self.format == "skops" else "thread"
        if self.executor != expected:
            raise ValueError(f"format {self.format!r} runs in the {expected!r} executor")
        if self.format == "onnx" and self.trusted_types:
            raise ValueError("trusted_types only applies to skops files")
        return self

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def max_batch_size(self) -> int:
        return self.batching.max_batch_size


class Manifest(_Frozen):
    """The whole manifest: every served model plus which one the default and heavy routes use."""

    schema_version: Literal[1]
    default_model: str
    heavy_model: str | None = None
    models: tuple[ModelSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _references_exist(self) -> Manifest:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("model names must be unique")
        for role, name in (("default_model", self.default_model), ("heavy_model", self.heavy_model)):
            if name is not None and name not in names:
                raise ValueError(f"{role} {name!r} is not one of the models")
        return self


def _display(path: Path) -> str:
    """A short path for messages: relative to the working directory when possible."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_manifest(model_dir: Path) -> Manifest:
    """Read and validate `manifest.json`; any problem is a one-line ModelLoadError naming the file."""
    path = model_dir / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ModelLoadError(_display(path), "file not found") from None
    except OSError as exc:
        raise ModelLoadError(_display(path), f"cannot be read ({exc.strerror})") from None
    try:
        return Manifest.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(_display(path), f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(root)"
        raise ModelLoadError(
            _display(path), f"invalid manifest: {where}: {first['msg']} ({exc.error_count()} error(s))"
        ) from None


def model_path(model_dir: Path, spec: ModelSpec) -> Path:
    return model_dir / spec.file


def read_verified(model_dir: Path, spec: ModelSpec) -> bytes:
    """The model file's bytes, refused unless their sha256 is the one in the manifest.

    The bytes that were hashed are the bytes that get loaded, so a file swapped after the check
    cannot slip through.
    """
    path = model_path(model_dir, spec)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelLoadError(_display(path), f"file not found (model {spec.name!r})") from None
    except OSError as exc:
        raise ModelLoadError(_display(path), f"cannot be read ({exc.strerror})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise ModelLoadError(
            _display(path),
            f"sha256 mismatch (manifest {spec.sha256[:12]}..., file {digest[:12]}...): "
            "corrupt or replaced; rebuild with `make models`",
        )
    return data


def display_path(model_dir: Path, spec: ModelSpec) -> str:
    """How messages name a model file."""
    return _display(model_path(model_dir, spec))
