"""/api/v1/predict and /api/v1/predict-heavy: the guide's two endpoints, one row each."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import InferenceDep, Predictor
from app.api.v1 import PREFIX
from app.ml.predictions import PredictionResult
from app.schemas.common import AUTHENTICATED_ERRORS, JSON_BODY_ERRORS, problem_responses
from app.schemas.prediction import PredictRequest, PredictResponse, row_fields

router = APIRouter(prefix=PREFIX, tags=["predictions"], responses=problem_responses(*AUTHENTICATED_ERRORS))

# 500: the model itself failed on these inputs (a prediction-failed problem), the one 500 by design.
ERRORS = problem_responses(*JSON_BODY_ERRORS, 500, 504)


def one_row(result: PredictionResult) -> PredictResponse:
    (row,) = result.predictions
    return PredictResponse(
        **row_fields(row), model=result.model, version=result.version, prediction_id=result.prediction_id
    )


@router.post("/predict", summary="Predict with the default model (thread pool)", responses=ERRORS)
async def predict(body: PredictRequest, user: Predictor, inference: InferenceDep) -> PredictResponse:
    """One row of features, in the default model's feature order (see `GET /api/v1/models`).
    The model runs on ONNX Runtime in a thread pool: it releases the GIL, so the event loop
    keeps serving other requests."""
    return one_row(await inference.predict_one(user.id, inference.default_model(), body.features))


@router.post("/predict-heavy", summary="Predict with the heavy model (process pool)", responses=ERRORS)
async def predict_heavy(body: PredictRequest, user: Predictor, inference: InferenceDep) -> PredictResponse:
    """One row for the heavy model, which holds the GIL while it computes, so it runs in worker
    processes that loaded it once at start-up."""
    return one_row(await inference.predict_one(user.id, inference.heavy_model(), body.features))
