"""Prediction, model-registry and prediction-log schemas for /api/v1."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictFloat, StrictInt, StrictStr, WithJsonSchema

from app.ml.drift import DRIFT_THRESHOLD
from app.ml.manifest import Executor
from app.ml.predictions import ClassPrediction, Prediction, PredictionResult
from app.schemas.common import RequestModel, ResponseModel

# Inputs are checked by the model layer against the model's own features (count, names, finite
# numbers), which names each bad value by its path (`rows.0.petal_width`); the schemas here only
# document the shape for clients and the OpenAPI document.
_NUMBER = {"type": "number"}
FeatureVector = Annotated[
    list[Any],
    WithJsonSchema(
        {"type": "array", "items": _NUMBER, "minItems": 1, "description": "Values in feature order."}
    ),
]
Rows = Annotated[
    list[Any],
    WithJsonSchema(
        {
            "type": "array",
            "minItems": 1,
            "description": "One row or a batch. Each row: an array in feature order, or an object "
            "keyed by feature name.",
            "items": {
                "anyOf": [
                    {"type": "array", "items": _NUMBER},
                    {"type": "object", "additionalProperties": _NUMBER},
                ]
            },
        }
    ),
]


class PredictRequest(RequestModel):
    features: FeatureVector


class BatchPredictRequest(RequestModel):
    rows: Rows


class RowPrediction(BaseModel):
    prediction: str | float = Field(description="The class label, or the regression value.")
    class_index: int | None = Field(None, description="Index of the label (classifiers).")
    probabilities: dict[str, float] | None = Field(None, description="Per class (classifiers).")


def row_fields(prediction: Prediction) -> dict[str, Any]:
    """The wire fields of one row's prediction: label, index and probabilities, or the value."""
    if isinstance(prediction, ClassPrediction):
        return {
            "prediction": prediction.label,
            "class_index": prediction.class_index,
            "probabilities": prediction.probabilities,
        }
    return {"prediction": prediction.value}


_PREDICTION_ID = Field(
    description="This answer's record in the prediction log: send the truth for it later to "
    "`POST /api/v1/predictions/{prediction_id}/feedback`."
)


class PredictResponse(RowPrediction):
    model: str
    version: str
    prediction_id: uuid.UUID = _PREDICTION_ID


class BatchPredictResponse(BaseModel):
    predictions: list[RowPrediction]
    model: str
    version: str
    prediction_id: uuid.UUID = _PREDICTION_ID


def batch_response(result: PredictionResult) -> BatchPredictResponse:
    return BatchPredictResponse(
        predictions=[RowPrediction(**row_fields(p)) for p in result.predictions],
        model=result.model,
        version=result.version,
        prediction_id=result.prediction_id,
    )


class FeatureInfo(BaseModel):
    name: str
    type: Literal["float"]


class AliasRoute(BaseModel):
    version: str
    weight: int


class ModelInfo(BaseModel):
    name: str
    version: str
    task: Literal["classification", "regression"]
    description: str
    executor: Executor = Field(
        description="Where it runs: `thread`, `process`, or `remote` (a model server)."
    )
    features: list[FeatureInfo] = Field(description="Input features, in the order rows must use.")
    labels: list[str] = Field(description="Class labels (classifiers), in probability order.")
    max_batch_size: int = Field(description="Most rows one request may send.")
    timeout_ms: int = Field(description="Time limit per request.")
    example_request: dict[str, Any] = Field(description="A valid body for /models/{name}/predict.")
    versions: list[str] = Field(description="The versions loaded in the process that answered.")
    aliases: dict[str, list[AliasRoute]] = Field(
        description="Where each alias sends requests in that process (`default`: requests that "
        "name no version), with each version's share in percent."
    )


class PredictionRecordPublic(ResponseModel):
    id: int
    prediction_id: uuid.UUID | None = Field(
        description="The id its answer carried (none for a job's record, or one older than ids)."
    )
    user_id: int
    model: str
    version: str
    rows: int
    latency_ms: float
    outcome: str = Field(description="`ok`, or the problem code of the failure.")
    inputs: Any | None = Field(description="The input rows, where the model's manifest allows it.")
    created_at: datetime


class PredictionRecordPage(BaseModel):
    items: list[PredictionRecordPublic]
    next_cursor: str | None


# --- feedback: the truth for a prediction, sent later ----------------------------------------------

Truth = Annotated[
    StrictStr | StrictFloat | StrictInt,
    WithJsonSchema(
        {
            "anyOf": [{"type": "string"}, {"type": "number"}],
            "description": "A classifier's true label, or a regressor's true value.",
        }
    ),
]


class FeedbackCreate(RequestModel):
    truth: list[Truth] = Field(
        min_length=1,
        max_length=10_000,
        description="One per row of the prediction, in its rows' order: the true label (classifiers) "
        "or value (regressors).",
    )


class FeedbackItem(FeedbackCreate):
    prediction_id: uuid.UUID = Field(description="The `prediction_id` of the answer.")


class BulkFeedbackCreate(RequestModel):
    items: list[FeedbackItem] = Field(min_length=1, max_length=1000)


class RowFeedback(BaseModel):
    row: int
    truth: str | float
    prediction: str | float = Field(description="What the model answered for the row.")
    correct: bool | None = Field(None, description="Whether the answered label was the truth (classifiers).")
    log_loss: float | None = Field(
        None, description="-ln of the probability answered for the truth (classifiers)."
    )
    abs_error: float | None = Field(None, description="|answered - truth| (regressors).")


class FeedbackPublic(BaseModel):
    prediction_id: uuid.UUID
    model: str
    version: str
    rows: list[RowFeedback]


class FeedbackRefused(BaseModel):
    """One item of a bulk form that was not recorded, as the single form's problem would say."""

    index: int = Field(description="Its place in `items`.")
    prediction_id: uuid.UUID
    status: int
    type: str
    detail: str
    errors: list[dict[str, str]] | None = None


class BulkFeedbackResult(BaseModel):
    recorded: list[FeedbackPublic]
    refused: list[FeedbackRefused]


# --- live quality -----------------------------------------------------------------------------------


class ShiftPublic(BaseModel):
    name: str = Field(description="The feature's name, or `prediction` for the answers.")
    psi: float | None = Field(description="Population Stability Index against the reference; null: no rows.")
    drifted: bool | None = Field(description="Whether psi is over 0.2, a shift worth acting on.")


class DriftPublic(BaseModel):
    method: Literal["psi"] = "psi"
    threshold: float = Field(DRIFT_THRESHOLD, description="psi over it: drifted.")
    rows: int = Field(description="Rows asked about in the window.")
    since: datetime | None = Field(
        description="The start of the window's first ten-minute period (null: from the first row)."
    )
    features: list[ShiftPublic]
    prediction: ShiftPublic = Field(description="The answers: labels (classifiers) or values (regressors).")


class VersionQualityPublic(BaseModel):
    version: str
    labelled: int = Field(description="Rows with a truth behind the figures (in the window).")
    accuracy: float | None = Field(None, description="Share of labels that were the truth (classifiers).")
    log_loss: float | None = Field(
        None, description="Mean -ln of the probability given the truth (classifiers)."
    )
    mae: float | None = Field(None, description="Mean absolute error (regressors).")
    rmse: float | None = Field(None, description="Root mean squared error (regressors).")
    drift: DriftPublic | None = Field(
        None, description="Against the version's reference; null where it is not loaded here or has none."
    )


class ShadowAgreementPublic(BaseModel):
    version: str = Field(description="The primary's version, which answered.")
    shadow_version: str
    compared: int = Field(description="Requests answered by both (in the window).")
    rows: int
    agreement: float | None = Field(None, description="Share of rows whose labels were alike (classifiers).")
    mean_abs_difference: float | None = Field(None, description="Mean |shadow - primary| (regressors).")


class ModelQuality(BaseModel):
    model: str
    task: Literal["classification", "regression"]
    window: str = Field(description="`last N labelled`, or the time range of the predictions.")
    versions: list[VersionQualityPublic]
    shadows: list[ShadowAgreementPublic] = Field(
        description="Each shadow against the primary on the same requests: over the newest N copies "
        "answered, or those answered in the time range."
    )
