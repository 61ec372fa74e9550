"""The model manifest (`ml_models/manifest.json`): its schema, and reading files with their sha256 checked."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from app.ml.errors import ModelLoadError
from app.ml.formats import RUNTIMES, known, runtime_kind
from app.ml.names import DEFAULT_ALIAS, MAX_LENGTH, MODEL_NAME_RULE, VERSION_RULE, ModelName, Version

MANIFEST_NAME = "manifest.json"

Task = Literal["classification", "regression"]
Executor = Literal["thread", "process", "remote"]


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


class RemoteSpec(_Frozen):
    """Where a remote model runs: an Open Inference Protocol (KServe V2) server, such as this
    service's own model server (`python -m app.cli model-server`), MLServer, KServe or Triton."""

    url: str = Field(pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$", description="The server's base URL.")
    # The model's name on that server (MLServer and Triton names may have capitals); the version
    # follows this service's rule (app.ml.names), as every version this service serves does.
    model: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: Version | None = None
    input: str = Field("input", min_length=1, max_length=128, description="The input tensor's name.")
    datatype: Literal["FP32", "FP64"] = "FP32"
    output: str = Field(
        min_length=1,
        max_length=128,
        description="The output to request: class probabilities (e.g. MLServer's `predict_proba`, "
        "this service's `probabilities`) or a regressor's value.",
    )
    # "service-token": send the registry's service token as `Authorization: Bearer` (this
    # service's model server requires it); "none" for a server guarded by the network alone.
    auth: Literal["none", "service-token"] = "none"
    connect_timeout_ms: int = Field(1000, ge=1, le=60_000)
    # True for this service's own model server (`ML_REMOTE_URL`): a version is loaded there,
    # through its repository extension, before this side routes to it.
    managed: bool = False
    max_connections: int = Field(32, ge=1, le=1024, description="Pooled keep-alive connections.")

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")

    @property
    def model_path(self) -> str:
        """`/v2/models/{model}` or `/v2/models/{model}/versions/{version}`."""
        path = f"/v2/models/{self.model}"
        return path if self.version is None else f"{path}/versions/{self.version}"


class Histogram(_Frozen):
    """A distribution over bins: `edges` cut a number line into len(edges) + 1 bins (a value equal
    to an edge falls in the bin above it); no edges: one bin per label, in label order."""

    edges: tuple[float, ...] = ()
    fractions: tuple[float, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Histogram:
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must be strictly increasing")
        if self.edges and len(self.fractions) != len(self.edges) + 1:
            raise ValueError("fractions must be one more than edges")
        if any(f < 0 for f in self.fractions) or abs(sum(self.fractions) - 1) > 1e-3:
            raise ValueError("fractions must be shares that sum to 1")
        return self


class Reference(_Frozen):
    """What a version's inputs and answers looked like on a sample of training or validation rows
    (`models add --reference`; app.ml.drift): live windows are compared with it (drift)."""

    rows: int = Field(ge=1, description="Rows of the sample the histograms were made from.")
    features: tuple[Histogram, ...] = Field(min_length=1, description="One per feature, in order.")
    prediction: Histogram = Field(description="Labels answered (classifiers) or values (regressors).")


class ModelSpec(_Frozen):
    """One served model: what it computes, where its file is (or which server runs it), and how."""

    name: ModelName
    version: Version
    task: Task
    format: str | None = Field(default=None, description="A runtime kind of app.ml.runtimes.RUNTIMES.")
    file: str | None = Field(default=None, description="Path relative to the model directory.")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    executor: Executor
    remote: RemoteSpec | None = Field(default=None, description="Only for `executor: remote`.")
    features: tuple[FeatureSpec, ...] = Field(min_length=1)
    labels: tuple[str, ...] = Field(
        default=(),
        description="Class names in the order of the model's probability columns, each once.",
    )
    batching: BatchingSpec
    timeout_ms: int = Field(ge=1, le=600_000, description="Time limit per request, queue included.")
    max_queue: int = Field(ge=1, description="Requests that may wait; more are refused at once.")
    log_inputs: bool = Field(description="Whether the prediction log may store the input rows.")
    trusted_types: tuple[str, ...] = Field(default=(), description="skops types to trust on load.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Held-out scores, informative.")
    reference: Reference | None = Field(default=None, description="For drift (app.ml.drift).")
    description: str = ""

    @field_validator("file")
    @classmethod
    def _inside_model_dir(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = PurePosixPath(value)
        if not value or "\\" in value or path.is_absolute() or ".." in path.parts:
            raise ValueError("must be a relative path inside the model directory")
        return value

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str | None) -> str | None:
        if value is not None and value not in RUNTIMES:
            raise ValueError(f"{value!r} is not a runtime here (formats: {known()})")
        return value

    @field_validator("version")
    @classmethod
    def _not_an_alias(cls, value: str) -> str:
        if value == DEFAULT_ALIAS:
            raise ValueError(f"{DEFAULT_ALIAS!r} is every model's alias, not a version")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        if len(set(self.labels)) != len(self.labels):
            # Predictions are keyed by label: a repeated one would hide a class's probability.
            raise ValueError("labels must be unique")
        if self.task == "classification" and len(self.labels) < 2:
            raise ValueError("a classifier needs at least two labels")
        if self.task == "regression" and self.labels:
            raise ValueError("a regressor has no labels")
        if self.reference is not None:
            self._check_reference(self.reference)
        if self.executor == "remote":
            if self.remote is None:
                raise ValueError("a remote model needs `remote` (url, model, output)")
            if (
                self.format is not None
                or self.file is not None
                or self.sha256 is not None
                or self.trusted_types
            ):
                raise ValueError("a remote model has no format, file, sha256 or trusted_types")
            return self
        if self.remote is not None:
            raise ValueError("`remote` only applies to executor 'remote'")
        if self.format is None or self.file is None or self.sha256 is None:
            raise ValueError("a local model needs format, file and sha256")
        # Where each format runs is its runtime kind's (app.ml.runtimes), nowhere else.
        kind = runtime_kind(self.format)
        if self.executor != kind.executor:
            raise ValueError(f"format {self.format!r} runs in the {kind.executor!r} executor")
        if self.trusted_types and not kind.trusts_types:
            takes = [k.title for k in RUNTIMES.values() if k.trusts_types]
            raise ValueError(f"trusted_types only applies to {' and '.join(takes) or 'no'} files")
        return self

    def _check_reference(self, reference: Reference) -> None:
        if len(reference.features) != len(self.features):
            raise ValueError("reference.features must have one histogram per feature")
        if any(not h.edges and len(h.fractions) != 1 for h in reference.features):
            raise ValueError("reference.features: a histogram needs edges (or is one bin)")
        answers = reference.prediction
        if self.task == "classification" and (answers.edges or len(answers.fractions) != len(self.labels)):
            raise ValueError("reference.prediction of a classifier has one fraction per label, no edges")
        if self.task == "regression" and not answers.edges and len(answers.fractions) != 1:
            raise ValueError("reference.prediction of a regressor needs edges (or is one bin)")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def max_batch_size(self) -> int:
        return self.batching.max_batch_size

    @property
    def local_file(self) -> str:
        """The model file of a local model (the manifest's validation guarantees one)."""
        if self.file is None:
            raise ValueError(f"model {self.name!r} is remote: it has no file")
        return self.file

    @property
    def local_sha256(self) -> str:
        if self.sha256 is None:
            raise ValueError(f"model {self.name!r} is remote: it has no file")
        return self.sha256


@dataclass(frozen=True, slots=True)
class RejectedEntry:
    """A manifest entry this process cannot take (a name or version outside the rule, a field
    it refuses): set aside, reported as UNAVAILABLE with `reason`, never served; the others are."""

    name: str
    version: str
    reason: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)


class Manifest(_Frozen):
    """The catalog of model files: every version that may be served (which ones are, and where
    each alias points, is the fleet's desired state, app.ml.fleet), plus which model the default
    and heavy routes use. Read it with `Manifest.parse`: an entry that fails validation is set
    aside (`rejected`) instead of failing the whole file."""

    schema_version: Literal[1]
    default_model: str
    heavy_model: str | None = None
    models: tuple[ModelSpec, ...] = Field(min_length=1)
    _rejected: tuple[RejectedEntry, ...] = PrivateAttr(default=())
    _order: tuple[tuple[str, str], ...] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _references_exist(self, info: ValidationInfo) -> Manifest:
        keys = [(m.name, m.version) for m in self.models]
        if len(set(keys)) != len(keys):
            raise ValueError("each (name, version) may appear once")
        # A model whose entries were all set aside is still the one its route names (it answers
        # 503 there until an entry it can take comes back), not a reason to refuse the file.
        context = info.context if isinstance(info.context, dict) else {}
        names = {m.name for m in self.models} | set(context.get("rejected_names", ()))
        for role, name in (("default_model", self.default_model), ("heavy_model", self.heavy_model)):
            if name is not None and name not in names:
                raise ValueError(f"{role} {name!r} is not one of the models")
        return self

    @classmethod
    def parse(cls, raw: Any) -> Manifest:
        """Validate a manifest document: each entry on its own (those that fail are set aside,
        see `rejected`), then the whole. Raises ValidationError for what concerns the whole file
        (its keys, references, duplicates, no entry that can be taken)."""
        entries = raw.get("models") if isinstance(raw, dict) else None
        if not isinstance(entries, list) or not entries:
            return cls.model_validate(raw)
        taken: list[ModelSpec] = []
        rejected: list[RejectedEntry] = []
        order: list[tuple[str, str]] = []
        for index, entry in enumerate(entries):
            try:
                spec = ModelSpec.model_validate(entry)
            except ValidationError as exc:
                rejected.append(_rejected(index, entry, exc))
                order.append(rejected[-1].key)
            else:
                taken.append(spec)
                order.append((spec.name, spec.version))
        if not taken:
            return cls.model_validate(raw)  # every entry refused: the first one's error, for the file
        context = {"rejected_names": [r.name for r in rejected]}
        manifest = cls.model_validate({**raw, "models": taken}, context=context)
        manifest._rejected = tuple(rejected)
        manifest._order = tuple(order)
        return manifest

    def listed(self) -> tuple[tuple[str, str], ...]:
        """Every (name, version) of the file, those set aside included, in its order."""
        if self._order is not None:
            return self._order
        return tuple((spec.name, spec.version) for spec in self.models)

    @property
    def rejected(self) -> tuple[RejectedEntry, ...]:
        """The entries set aside when the manifest was read, in its order."""
        return self._rejected

    def rejection(self, name: str, version: str) -> RejectedEntry | None:
        for entry in self._rejected:
            if entry.key == (name, version):
                return entry
        return None

    def find(self, name: str, version: str) -> ModelSpec | None:
        """The entry of one version of a model, or None."""
        for spec in self.models:
            if spec.name == name and spec.version == version:
                return spec
        return None

    def versions(self, name: str) -> tuple[str, ...]:
        """The versions the manifest lists for a model, in its order (the first is the one a fresh
        deployment serves; `models add` appends)."""
        return tuple(spec.version for spec in self.models if spec.name == name)

    def names(self) -> tuple[str, ...]:
        """Every model's name once, in the manifest's order."""
        return tuple(dict.fromkeys(spec.name for spec in self.models))


_RULES = {"name": f"must be {MODEL_NAME_RULE}", "version": f"must be {VERSION_RULE}"}


def _rejected(index: int, entry: object, exc: ValidationError) -> RejectedEntry:
    """What a refused entry is called (its name and version as written, shortened) and why."""
    fields = entry if isinstance(entry, dict) else {}
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "string_pattern_mismatch":
        message = _RULES.get(where, message)
    reason = f"manifest entry {index} refused: {where + ': ' if where else ''}{message}"
    return RejectedEntry(
        str(fields.get("name", f"#{index}"))[:MAX_LENGTH],
        str(fields.get("version", "?"))[:MAX_LENGTH],
        reason,
    )


def served_remotely(manifest: Manifest, url: str) -> Manifest:
    """The manifest with every local model served by this service's model server at `url` (the
    web tier's `ML_REMOTE_URL`): same names, versions, features, labels and limits, so inputs are
    checked here exactly as there; remote entries stay as they are."""
    models = []
    rejected = list(manifest.rejected)
    for index, spec in enumerate(manifest.models):
        if spec.remote is not None:
            models.append(spec)
            continue
        try:
            remote = RemoteSpec(
                url=url,
                model=spec.name,
                version=spec.version,
                output="probabilities" if spec.task == "classification" else "prediction",
                auth="service-token",
                managed=True,
            )
        except ValidationError as exc:  # the rule (app.ml.names) makes it unreachable; kept safe
            rejected.append(_rejected(index, spec.model_dump(), exc))
            continue
        models.append(
            spec.model_copy(
                update={
                    "executor": "remote",
                    "remote": remote,
                    "format": None,
                    "file": None,
                    "sha256": None,
                    "trusted_types": (),
                }
            )
        )
    served = manifest.model_copy(update={"models": tuple(models)})
    served._rejected = tuple(rejected)
    return served


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
        return Manifest.parse(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(_display(path), f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(root)"
        raise ModelLoadError(
            _display(path), f"invalid manifest: {where}: {first['msg']} ({exc.error_count()} error(s))"
        ) from None


def model_path(model_dir: Path, spec: ModelSpec) -> Path:
    return model_dir / spec.local_file


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
    if digest != spec.local_sha256:
        raise ModelLoadError(
            _display(path),
            f"sha256 mismatch (manifest {spec.local_sha256[:12]}..., file {digest[:12]}...): "
            "corrupt or replaced; restore the file (`make models` rebuilds the bundled ones) or add it "
            "again with `python -m app.cli models add`",
        )
    return data


def display_path(model_dir: Path, spec: ModelSpec) -> str:
    """How messages name a model file."""
    return _display(model_path(model_dir, spec))


def display_manifest(model_dir: Path) -> str:
    """How messages name the manifest."""
    return _display(model_dir / MANIFEST_NAME)
