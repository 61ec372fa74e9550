"""Served predictions equal scikit-learn's own, on every row of each model's dataset."""

from __future__ import annotations

import asyncio
from types import ModuleType

import numpy as np
import pytest

from app.ml.predictions import ClassPrediction, RegressionPrediction
from app.ml.registry import ModelRegistry

# ONNX computes in float32: class probabilities may differ from scikit-learn's float64 ones by
# rounding (measured: 2.7e-7 at most for iris), so they are compared to an absolute 1e-5.
PROBABILITY_ATOL = 1e-5
# Regression values reach ~300; float32 gives ~1e-7 relative (measured 2.7e-7), compared to 1e-5.
REGRESSION_RTOL = 1e-5


async def _predict_all(
    registry: ModelRegistry, name: str, x: np.ndarray
) -> list[ClassPrediction | RegressionPrediction]:
    """Every row, sent as JSON-like lists in requests of at most max_batch_size rows, concurrently."""
    size = registry.get(name).max_batch_size
    chunks = [x[i : i + size].tolist() for i in range(0, len(x), size)]
    results = await asyncio.gather(*(registry.predict(name, chunk) for chunk in chunks))
    return [p for result in results for p in result.predictions]


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["iris", "breast_cancer"])
async def test_classifier_matches_scikit_learn_on_whole_dataset(
    registry: ModelRegistry, train_models: ModuleType, name: str
) -> None:
    estimator, *_ = train_models.TRAINERS[name]()
    data = train_models.DATASETS[name]()
    served = [p for p in await _predict_all(registry, name, data.x) if isinstance(p, ClassPrediction)]
    assert len(served) == len(data.x)
    labels = registry.get(name).labels
    expected_index = estimator.predict(data.x)
    # Labels: exactly scikit-learn's, for every row.
    assert [p.class_index for p in served] == expected_index.tolist()
    assert [p.label for p in served] == [labels[i] for i in expected_index]
    probabilities = np.array([[p.probabilities[label] for label in labels] for p in served])
    expected = estimator.predict_proba(data.x)
    if name == "breast_cancer":
        # Same scikit-learn code in the worker (trees cast inputs to float32 either way): equal.
        np.testing.assert_array_equal(probabilities, expected)
    else:
        np.testing.assert_allclose(probabilities, expected, rtol=0, atol=PROBABILITY_ATOL)


@pytest.mark.asyncio
async def test_regressor_matches_scikit_learn_on_whole_dataset(
    registry: ModelRegistry, train_models: ModuleType
) -> None:
    estimator, *_ = train_models.train_diabetes()
    data = train_models.diabetes_data()
    served = [
        p for p in await _predict_all(registry, "diabetes", data.x) if isinstance(p, RegressionPrediction)
    ]
    assert len(served) == len(data.x)
    values = np.array([p.value for p in served])
    np.testing.assert_allclose(values, estimator.predict(data.x), rtol=REGRESSION_RTOL)


@pytest.mark.asyncio
async def test_objects_keyed_by_name_give_the_same_answer_as_arrays(
    registry: ModelRegistry, train_models: ModuleType
) -> None:
    data = train_models.iris_data()
    rows = data.x[:20].tolist()
    keyed = [dict(zip(reversed(data.features), reversed(row), strict=True)) for row in rows]
    assert (await registry.predict("iris", rows)).predictions == (
        await registry.predict("iris", keyed)
    ).predictions
    single = await registry.predict_one("iris", keyed[0])
    assert single.predictions[0] == (await registry.predict("iris", rows)).predictions[0]
    assert single.model == "iris"
    assert single.version == "1.0.0"
