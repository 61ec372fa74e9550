"""/api/v1/models: the model registry clients read, and batch predictions by model name."""

from __future__ import annotations

from fastapi import APIRouter, Path

from app.api.deps import InferenceDep, ModelReader, Predictor
from app.api.v1 import PREFIX
from app.ml.manifest import ModelSpec
from app.schemas.common import AUTHENTICATED_ERRORS, JSON_BODY_ERRORS, problem_responses
from app.schemas.prediction import (
    BatchPredictRequest,
    BatchPredictResponse,
    FeatureInfo,
    ModelInfo,
    RowPrediction,
    row_fields,
)

router = APIRouter(
    prefix=f"{PREFIX}/models", tags=["models"], responses=problem_responses(*AUTHENTICATED_ERRORS)
)

ModelName = Path(min_length=1, max_length=64, description="The model's name.")


def model_info(spec: ModelSpec) -> ModelInfo:
    return ModelInfo(
        name=spec.name,
        version=spec.version,
        task=spec.task,
        description=spec.description,
        executor=spec.executor,
        features=[FeatureInfo(name=f.name, type=f.type) for f in spec.features],
        labels=list(spec.labels),
        max_batch_size=spec.batching.max_batch_size,
        timeout_ms=spec.timeout_ms,
        example_request={"rows": [{f.name: 0.0 for f in spec.features}]},
    )


@router.get("", summary="List the served models")
async def list_models(_user: ModelReader, inference: InferenceDep) -> list[ModelInfo]:
    return [model_info(spec) for spec in inference.models()]


@router.get("/{name}", summary="A model's metadata and input schema", responses=problem_responses(404, 422))
async def read_model(_user: ModelReader, inference: InferenceDep, name: str = ModelName) -> ModelInfo:
    return model_info(inference.model(name))


@router.post(
    "/{name}/predict",
    summary="Predict one row or a batch",
    responses=problem_responses(404, *JSON_BODY_ERRORS, 500, 504),
)
async def predict_rows(
    body: BatchPredictRequest, user: Predictor, inference: InferenceDep, name: str = ModelName
) -> BatchPredictResponse:
    """Rows as arrays in feature order or objects keyed by feature name; at most the model's
    `max_batch_size` rows (413 beyond). Concurrent requests are batched together by the server."""
    result = await inference.predict_rows(user.id, name, body.rows)
    return BatchPredictResponse(
        predictions=[RowPrediction(**row_fields(p)) for p in result.predictions],
        model=result.model,
        version=result.version,
    )
