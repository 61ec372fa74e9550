"""Open Inference Protocol (KServe V2) over REST, JSON tensors: /v2 health, metadata and infer.

Errors here use the protocol's shape, `{"error": "..."}` (see app.http.problems). One
implementation for both tiers, built by `oip_router` from what each passes in: who may call (on the
web tier an access token or a key with the scope, tritonclient sending it via `headers=`; on the
model server its service token), the inference service and the repository extension.

(No `from __future__ import annotations` here: the routes' annotations name the dependencies passed
to `oip_router`, which FastAPI can resolve only if they are evaluated where the routes are made.)
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.core.errors import BadRequest, ValidationFailed
from app.ml.formats import platform
from app.ml.inputs import INPUT_TENSOR, TensorError, tensor_rows
from app.ml.manifest import ModelSpec
from app.ml.names import MODEL_NAME_PATTERN, VERSION_PATTERN
from app.ml.predictions import ClassPrediction, RegressionPrediction
from app.schemas.oip import (
    InferenceRequest,
    InferenceResponse,
    Live,
    ModelMetadata,
    ModelReady,
    OipError,
    Ready,
    RepositoryChanged,
    RepositoryIndexRequest,
    RepositoryLoadRequest,
    RepositoryModel,
    ResponseOutput,
    ServerMetadata,
    TensorMetadata,
)
from app.services.inference import InferenceService
from app.services.model_fleet import ModelRepository


class BinaryDataUnsupported(BadRequest):
    def __init__(self) -> None:
        super().__init__(
            "The binary tensor data extension is not supported: send JSON tensors "
            "(tritonclient: set_data_from_numpy(..., binary_data=False) and request outputs with "
            "binary_data=False)."
        )


# Errors in the protocol's shape, under application/json: also those that middleware answers
# before a route runs (body and header limits, trusted hosts, shedding; app.http.problems).
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OipError} for status in (400, 401, 404, 413, 422, 429, 503, 504)
}
ModelName = Path(pattern=MODEL_NAME_PATTERN, description="The model's name.")
ModelVersion = Path(pattern=VERSION_PATTERN, description="The model's version.")
NUMERIC = {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"}


def _inline_schema(model: type[InferenceRequest]) -> dict[str, Any]:
    """The model's JSON schema with its `$defs` inlined, for a request body documented by hand."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def _outputs(spec: ModelSpec) -> list[TensorMetadata]:
    if spec.task == "classification":
        return [
            TensorMetadata(name="label", datatype="BYTES", shape=[-1]),
            TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, len(spec.labels)]),
        ]
    return [TensorMetadata(name="prediction", datatype="FP64", shape=[-1])]


def _metadata(inference: InferenceService, spec: ModelSpec) -> ModelMetadata:
    return ModelMetadata(
        name=spec.name,
        versions=inference.versions(spec.name),
        platform=platform(spec.format),
        inputs=[TensorMetadata(name=INPUT_TENSOR, datatype="FP32", shape=[-1, len(spec.features)])],
        outputs=_outputs(spec),
    )


def _rows(body: InferenceRequest, spec: ModelSpec) -> list[Any]:
    if len(body.inputs) != 1:
        raise BadRequest(
            f"Model {spec.name!r} takes one input tensor, `{INPUT_TENSOR}`, of shape [batch, features]."
        )
    tensor = body.inputs[0]
    if tensor.name != INPUT_TENSOR:
        raise ValidationFailed(
            f"Model {spec.name!r} has no input {tensor.name!r}; its input is {INPUT_TENSOR!r} "
            f"(GET /v2/models/{spec.name}).",
            errors=[{"field": "inputs.0.name", "message": f"must be {INPUT_TENSOR!r}"}],
        )
    if tensor.datatype not in NUMERIC:
        raise BadRequest(f"Input {tensor.name!r} must be numeric (FP32, FP64 or an integer type).")
    try:
        return tensor_rows(tensor.name, tensor.datatype, tensor.shape, tensor.data, len(spec.features))
    except TensorError as exc:
        raise BadRequest(f"{exc} Features: {', '.join(spec.feature_names)}.") from None


def _wants_binary(body: InferenceRequest) -> bool:
    if body.parameters and body.parameters.get("binary_data_output"):
        return True
    if any(t.parameters and "binary_data_size" in t.parameters for t in body.inputs):
        return True
    return any(o.parameters and o.parameters.get("binary_data") for o in body.outputs or [])


# What both inference routes document: 500 is the model itself failing on these inputs
# (PredictionFailed), the one 500 by design; the body is the protocol's request, inlined.
_INFER_DOCS: dict[str, Any] = {
    "responses": {**ERRORS, 500: {"model": OipError}},
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline_schema(InferenceRequest)}},
        }
    },
}


async def _infer(
    request: Request, caller: int, inference: InferenceService, name: str, version: str | None = None
) -> InferenceResponse:
    # The body is parsed here rather than by a body parameter: tritonclient sends JSON without a
    # Content-Type header, and a binary-extension body (JSON followed by raw bytes) must get a
    # clear 400 rather than read as malformed JSON.
    if "inference-header-content-length" in request.headers:
        raise BinaryDataUnsupported
    try:
        body = InferenceRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in exc.errors(include_url=False)]
        ) from None
    if _wants_binary(body):
        raise BinaryDataUnsupported
    # Routed once: the rows are read, and the outputs named, for the version that serves them.
    served = inference.route(caller, name, version)
    spec = served.spec
    rows = _rows(body, spec)
    shadow = inference.shadow_of(name, version)
    result = await inference.run_rows(caller, served, rows, field="inputs.0.data", shadow=shadow)
    count = len(result.predictions)
    available: dict[str, ResponseOutput] = {}
    classes = [p for p in result.predictions if isinstance(p, ClassPrediction)]
    if classes:
        available["label"] = ResponseOutput(
            name="label", shape=[count], datatype="BYTES", data=[p.label for p in classes]
        )
        available["probabilities"] = ResponseOutput(
            name="probabilities",
            shape=[count, len(spec.labels)],
            datatype="FP32",
            data=[p.probabilities[label] for p in classes for label in spec.labels],
        )
    else:
        values = [p.value for p in result.predictions if isinstance(p, RegressionPrediction)]
        available["prediction"] = ResponseOutput(
            name="prediction", shape=[count], datatype="FP64", data=values
        )
    wanted = [o.name for o in body.outputs] if body.outputs else list(available)
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise BadRequest(f"Unknown output {unknown[0]!r}; model {spec.name!r} has {', '.join(available)}.")
    return InferenceResponse(
        model_name=result.model,
        model_version=result.version,
        id=body.id,
        parameters=None if result.prediction_id is None else {"prediction_id": str(result.prediction_id)},
        outputs=[available[n] for n in wanted],
    )


# --- the repository extension: which versions are loaded (admins; the model server's token) ---

# Also 403 (a user who is not an admin, a key without the `admin` scope) and, for changes, 409.
_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 403: {"model": OipError}}
_CHANGE_ERRORS: dict[int | str, dict[str, Any]] = {**_ADMIN_ERRORS, 409: {"model": OipError}}


def _version(body: RepositoryLoadRequest | None) -> str | None:
    """`parameters.version` of a load or unload (none: the newest version, or the whole model)."""
    return body.parameters.version if body is not None and body.parameters is not None else None


# A dependency answering who calls, as the id predictions are logged against (0: the model server).
CallerId = Callable[..., Awaitable[int]]


def oip_router(
    *,
    reader: CallerId,
    predictor: CallerId,
    admin: CallerId,
    inference: Callable[..., Awaitable[InferenceService]],
    repository: Callable[..., Awaitable[ModelRepository]],
) -> APIRouter:
    """The `/v2` routes, with the dependencies each tier passes: `reader` for health and metadata,
    `predictor` for inference, `admin` for the repository extension; `inference` (the models: the
    web tier's registry with its prediction log, the model server's without) and `repository` (a
    load or unload fleet-wide on the web tier, in the process alone on the model server). The web
    tier's are in app.api.deps (app.main), the model server's in app.model_server."""
    router = APIRouter(prefix="/v2", tags=["open inference protocol"])
    as_reader, as_predictor, as_admin = Depends(reader), Depends(predictor), Depends(admin)
    models, extension = Depends(inference), Depends(repository)

    @router.get("/health/live", summary="Server live", responses=ERRORS)
    async def live(_caller: Annotated[int, as_reader]) -> Live:
        return Live(live=True)

    @router.get("/health/ready", summary="Server ready", responses=ERRORS)
    async def ready(
        _caller: Annotated[int, as_reader], inference: Annotated[InferenceService, models], response: Response
    ) -> Ready:
        is_ready = inference.ready
        if not is_ready:
            response.status_code = 503
        return Ready(ready=is_ready)

    @router.get("", summary="Server metadata", responses=ERRORS)
    async def server_metadata(_caller: Annotated[int, as_reader], request: Request) -> ServerMetadata:
        return ServerMetadata(
            name=request.app.title, version=request.app.version, extensions=["model_repository"]
        )

    @router.get("/models/{name}", summary="Model metadata", responses=ERRORS)
    async def model_metadata(
        _caller: Annotated[int, as_reader],
        inference: Annotated[InferenceService, models],
        name: str = ModelName,
    ) -> ModelMetadata:
        """The model's default version; `versions` lists every version loaded here."""
        return _metadata(inference, inference.model(name))

    @router.get("/models/{name}/versions/{version}", summary="Model version metadata", responses=ERRORS)
    async def model_version_metadata(
        _caller: Annotated[int, as_reader],
        inference: Annotated[InferenceService, models],
        name: str = ModelName,
        version: str = ModelVersion,
    ) -> ModelMetadata:
        """`version` is a version or an alias (`production`); a split alias shows its main version."""
        return _metadata(inference, inference.model(name, version))

    @router.get("/models/{name}/ready", summary="Model ready", responses=ERRORS)
    async def model_ready(
        _caller: Annotated[int, as_reader],
        inference: Annotated[InferenceService, models],
        response: Response,
        name: str = ModelName,
    ) -> ModelReady:
        """200 when the model answers now; 503 while its worker pool restarts or its server is down."""
        spec = inference.model(name)
        is_ready = inference.model_ready(name)
        if not is_ready:
            response.status_code = 503
        return ModelReady(name=spec.name, ready=is_ready)

    @router.get("/models/{name}/versions/{version}/ready", summary="Model version ready", responses=ERRORS)
    async def model_version_ready(
        _caller: Annotated[int, as_reader],
        inference: Annotated[InferenceService, models],
        response: Response,
        name: str = ModelName,
        version: str = ModelVersion,
    ) -> ModelReady:
        spec = inference.model(name, version)
        is_ready = inference.model_ready(name, version)
        if not is_ready:
            response.status_code = 503
        return ModelReady(name=spec.name, ready=is_ready)

    @router.post("/models/{name}/infer", summary="Inference", **_INFER_DOCS)
    async def infer(
        request: Request,
        caller: Annotated[int, as_predictor],
        inference: Annotated[InferenceService, models],
        name: str = ModelName,
    ) -> InferenceResponse:
        """One input tensor `input` (the name the model's metadata gives; another is a 422) of shape
        [batch, features] (row-major `data`, flat or nested); each output asked for at most once."""
        return await _infer(request, caller, inference, name)

    @router.post("/models/{name}/versions/{version}/infer", summary="Inference, one version", **_INFER_DOCS)
    async def infer_version(
        request: Request,
        caller: Annotated[int, as_predictor],
        inference: Annotated[InferenceService, models],
        name: str = ModelName,
        version: str = ModelVersion,
    ) -> InferenceResponse:
        """As `/models/{name}/infer`, for one version, or for an alias (`production`, a canary
        split): `model_version` in the answer names the version that served it."""
        return await _infer(request, caller, inference, name, version)

    @router.post("/repository/index", summary="Repository index", responses=_ADMIN_ERRORS)
    async def repository_index(
        _caller: Annotated[int, as_admin],
        repository: Annotated[ModelRepository, extension],
        body: RepositoryIndexRequest | None = None,
    ) -> list[RepositoryModel]:
        """Every version of the manifest, and every one the fleet's state names, with its state in the
        process that answered."""
        only_ready = body is not None and body.ready is True  # the protocol: false filters nothing
        return [
            RepositoryModel(name=v.name, version=v.version, state=v.state, reason=v.reason)
            for v in repository.index()
            if not only_ready or v.state == "READY"
        ]

    @router.post(
        "/repository/models/{name}/load",
        summary="Load a model version",
        responses=_CHANGE_ERRORS,
    )
    async def repository_load(
        caller: Annotated[int, as_admin],
        repository: Annotated[ModelRepository, extension],
        name: str = ModelName,
        body: RepositoryLoadRequest | None = None,
    ) -> RepositoryChanged:
        """`parameters.version` (none: the newest the manifest lists). The file's sha256 is checked
        and a warm-up row run before the version can be routed to (409 naming the file otherwise,
        and nothing changes); on the web tier every worker and replica then loads it too."""
        version = _version(body)
        loaded, revision = await repository.load(caller, name, version)
        return RepositoryChanged(name=name, version=loaded, revision=revision)

    @router.post(
        "/repository/models/{name}/unload",
        summary="Unload a model version",
        responses=_CHANGE_ERRORS,
    )
    async def repository_unload(
        caller: Annotated[int, as_admin],
        repository: Annotated[ModelRepository, extension],
        name: str = ModelName,
        body: RepositoryLoadRequest | None = None,
    ) -> RepositoryChanged:
        """`parameters.version` (none: the whole model and its aliases). Refused (409) while an alias
        routes to the version; its in-flight requests finish before it goes."""
        version = _version(body)
        revision = await repository.unload(caller, name, version)
        return RepositoryChanged(name=name, version=version, revision=revision)

    return router
