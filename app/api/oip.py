"""Open Inference Protocol (KServe V2) over REST, JSON tensors: /v2 health, metadata and infer.

Errors here use the protocol's shape, `{"error": "..."}` (see app.http.problems). Like every
model endpoint, these need a valid access token (tritonclient sends it via `headers=`); in the
model server (app.model_server) the same routes take the service token instead.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.api.deps import InferenceDep, OipPredictor, OipReader
from app.core.errors import BadRequest, NotFound
from app.ml.inputs import TensorError, tensor_rows
from app.ml.manifest import ModelSpec
from app.ml.predictions import ClassPrediction, RegressionPrediction
from app.schemas.oip import (
    InferenceRequest,
    InferenceResponse,
    Live,
    ModelMetadata,
    ModelReady,
    OipError,
    Ready,
    ResponseOutput,
    ServerMetadata,
    TensorMetadata,
)
from app.services.inference import InferenceService


class BinaryDataUnsupported(BadRequest):
    def __init__(self) -> None:
        super().__init__(
            "The binary tensor data extension is not supported: send JSON tensors "
            "(tritonclient: set_data_from_numpy(..., binary_data=False) and request outputs with "
            "binary_data=False)."
        )


router = APIRouter(prefix="/v2", tags=["open inference protocol"])

# Errors in the protocol's shape, under application/json: also those that middleware answers
# before a route runs (body and header limits, trusted hosts, shedding; app.http.problems).
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OipError} for status in (400, 401, 404, 413, 422, 429, 503, 504)
}
ModelName = Path(min_length=1, max_length=64)
ModelVersion = Path(min_length=1, max_length=64)
PLATFORMS = {"onnx": "onnxruntime_onnx", "skops": "sklearn_skops", "remote": "remote_oip"}
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


@router.get("/health/live", summary="Server live", responses=ERRORS)
async def live(_caller: OipReader) -> Live:
    return Live(live=True)


@router.get("/health/ready", summary="Server ready", responses=ERRORS)
async def ready(_caller: OipReader, inference: InferenceDep, response: Response) -> Ready:
    is_ready = inference.ready
    if not is_ready:
        response.status_code = 503
    return Ready(ready=is_ready)


@router.get("", summary="Server metadata", responses=ERRORS)
async def server_metadata(_caller: OipReader, request: Request) -> ServerMetadata:
    return ServerMetadata(name=request.app.title, version=request.app.version, extensions=[])


@router.get("/models/{name}", summary="Model metadata", responses=ERRORS)
async def model_metadata(_caller: OipReader, inference: InferenceDep, name: str = ModelName) -> ModelMetadata:
    spec = inference.model(name)
    return ModelMetadata(
        name=spec.name,
        versions=[spec.version],
        platform=PLATFORMS[spec.format or "remote"],
        inputs=[TensorMetadata(name="input", datatype="FP32", shape=[-1, len(spec.features)])],
        outputs=_outputs(spec),
    )


@router.get("/models/{name}/versions/{version}", summary="Model version metadata", responses=ERRORS)
async def model_version_metadata(
    caller: OipReader, inference: InferenceDep, name: str = ModelName, version: str = ModelVersion
) -> ModelMetadata:
    _check_version(inference.model(name), version)
    return await model_metadata(caller, inference, name)


@router.get("/models/{name}/ready", summary="Model ready", responses=ERRORS)
async def model_ready(
    _caller: OipReader, inference: InferenceDep, response: Response, name: str = ModelName
) -> ModelReady:
    """200 when the model answers now; 503 while its worker pool restarts or its server is down."""
    spec = inference.model(name)
    is_ready = inference.model_ready(name)
    if not is_ready:
        response.status_code = 503
    return ModelReady(name=spec.name, ready=is_ready)


@router.get("/models/{name}/versions/{version}/ready", summary="Model version ready", responses=ERRORS)
async def model_version_ready(
    caller: OipReader,
    inference: InferenceDep,
    response: Response,
    name: str = ModelName,
    version: str = ModelVersion,
) -> ModelReady:
    _check_version(inference.model(name), version)
    return await model_ready(caller, inference, response, name)


def _check_version(spec: ModelSpec, version: str) -> None:
    """Each model serves one version (the manifest's): any other is not found."""
    if version != spec.version:
        raise NotFound(f"Model {spec.name!r} has no version {version!r}; it serves {spec.version!r}.")


def _rows(body: InferenceRequest, spec: ModelSpec) -> list[Any]:
    if len(body.inputs) != 1:
        raise BadRequest(f"Model {spec.name!r} takes one input tensor, `input`, of shape [batch, features].")
    tensor = body.inputs[0]
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


@router.post("/models/{name}/infer", summary="Inference", **_INFER_DOCS)
async def infer(
    request: Request, caller: OipPredictor, inference: InferenceDep, name: str = ModelName
) -> InferenceResponse:
    """One input tensor `input` of shape [batch, features] (row-major `data`, flat or nested)."""
    return await _infer(request, caller, inference, name)


@router.post("/models/{name}/versions/{version}/infer", summary="Inference, one version", **_INFER_DOCS)
async def infer_version(
    request: Request,
    caller: OipPredictor,
    inference: InferenceDep,
    name: str = ModelName,
    version: str = ModelVersion,
) -> InferenceResponse:
    """As `/models/{name}/infer`, for the one version the model serves (any other is a 404)."""
    _check_version(inference.model(name), version)
    return await _infer(request, caller, inference, name)


async def _infer(request: Request, caller: int, inference: InferenceService, name: str) -> InferenceResponse:
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
    spec = inference.model(name)
    result = await inference.predict_rows(caller, name, _rows(body, spec), field="inputs.0.data")
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
        outputs=[available[n] for n in wanted],
    )
