"""Prediction results: what a classifier or a regressor returns for each row, independent of HTTP."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from app.ml.manifest import ModelSpec, Task


@dataclass(frozen=True, slots=True)
class ClassPrediction:
    """A classifier's answer for one row."""

    label: str
    class_index: int
    probabilities: dict[str, float]


@dataclass(frozen=True, slots=True)
class RegressionPrediction:
    """A regressor's answer for one row."""

    value: float


Prediction = ClassPrediction | RegressionPrediction


@dataclass(frozen=True, slots=True)
class PredictionResult:
    """The answers for one request's rows, in order, with the model that produced them."""

    model: str
    version: str
    task: Task
    predictions: tuple[Prediction, ...]
    elapsed_ms: float  # queue wait + inference, as seen by the registry
    # The id of the answer's record in the prediction log (set by the service that logs it; None
    # where nothing is logged: the model server).
    prediction_id: uuid.UUID | None = None
    # The rows as the model took them (rows, features) and its raw answers (rows, k): drift's
    # counts are made of them off the response path (app.ml.drift). None where not kept.
    inputs: np.ndarray | None = None
    outputs: np.ndarray | None = None


def to_predictions(spec: ModelSpec, outputs: np.ndarray) -> tuple[Prediction, ...]:
    """Turn the runtime's (rows, k) float64 matrix into per-row results.

    Classifiers give one probability column per label, in the manifest's label order; the class is
    the first column with the highest probability, as scikit-learn's `predict` picks it.
    """
    if spec.task == "regression":
        return tuple(RegressionPrediction(float(v)) for v in outputs[:, 0].tolist())
    labels = spec.labels
    indices = outputs.argmax(axis=1).tolist()
    return tuple(
        ClassPrediction(labels[index], index, dict(zip(labels, row, strict=True)))
        for index, row in zip(indices, outputs.tolist(), strict=True)
    )


def output_values(result: PredictionResult) -> list[object]:
    """What the prediction log keeps of an answer, per row: a classifier's probabilities in label
    order (its label is the first highest), a regressor's value."""
    return [
        list(p.probabilities.values()) if isinstance(p, ClassPrediction) else p.value
        for p in result.predictions
    ]
