"""Input validation: each kind of bad input gives InvalidInput or BatchTooLarge with field paths."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from app.ml.errors import BatchTooLarge, InvalidInput
from app.ml.inputs import MAX_ERRORS, validate_features, validate_rows
from app.ml.manifest import ModelSpec
from app.ml.registry import ModelRegistry

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
IRIS_NAMES = "sepal_length, sepal_width, petal_length, petal_width"


def _errors(spec: ModelSpec, rows: Any, **kwargs: Any) -> list[tuple[str, str]]:
    with pytest.raises(InvalidInput) as caught:
        validate_rows(spec, rows, **kwargs)
    assert IRIS_NAMES in str(caught.value)  # the summary names the expected features, in order
    return list(caught.value.errors)


def test_valid_rows_become_a_float32_matrix(specs: dict[str, ModelSpec]) -> None:
    iris = specs["iris"]
    keyed = dict(zip(iris.feature_names, IRIS_ROW, strict=True))
    x = validate_rows(iris, [IRIS_ROW, keyed, [5, 3, 1, 0]])
    assert x.dtype == np.float32
    assert x.shape == (3, 4)
    assert x[0].tolist() == x[1].tolist()
    assert validate_features(iris, IRIS_ROW).shape == (1, 4)


def test_wrong_number_of_values_names_the_expected_features(specs: dict[str, ModelSpec]) -> None:
    ((field, message),) = _errors(specs["iris"], [IRIS_ROW, [1.0, 2.0, 3.0]])
    assert field == "rows.1"
    assert message == f"expected 4 values in this order: {IRIS_NAMES}; got 3"


def test_unknown_and_missing_names(specs: dict[str, ModelSpec]) -> None:
    row = {"sepal_length": 1.0, "sepal_width": 2.0, "petal_length": 3.0, "petal_wdth": 4.0}
    errors = dict(_errors(specs["iris"], [row]))
    assert errors["rows.0.petal_wdth"].startswith("unknown feature; expected: sepal_length")
    assert errors["rows.0.petal_width"].startswith("missing feature; expected: sepal_length")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "must be a number, got a boolean"),
        ("1.5", "must be a number, got a string"),
        (None, "must be a number, got null"),
        ([1.0], "must be a number, got an array"),
        ({"x": 1}, "must be a number, got an object"),
        (math.nan, "must be a finite number"),
        (math.inf, "must be a finite number"),
        (-math.inf, "must be a finite number"),
        (1e39, "out of range for a 32-bit float"),
        (10**400, "out of range for a 32-bit float"),
    ],
)
def test_values_must_be_finite_numbers(specs: dict[str, ModelSpec], value: object, message: str) -> None:
    iris = specs["iris"]
    ((field, text),) = _errors(iris, [[1.0, 2.0, value, 4.0]])
    assert field == "rows.0.2"
    assert message in text
    assert text.endswith("(petal_length)")
    keyed = dict(zip(iris.feature_names, [1.0, 2.0, value, 4.0], strict=True))
    with pytest.raises(InvalidInput) as caught:
        validate_features(iris, keyed)
    assert caught.value.errors == (("features.petal_length", text.removesuffix(" (petal_length)")),)


def test_single_row_paths_use_the_features_field(specs: dict[str, ModelSpec]) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_features(specs["iris"], [1.0, False, 3.0, 4.0])
    assert caught.value.errors[0][0] == "features.1"
    with pytest.raises(InvalidInput) as caught:
        validate_features(specs["iris"], "1,2,3,4")
    assert caught.value.errors[0][0] == "features"


@pytest.mark.parametrize("rows", [[], {}, "rows", 3, None])
def test_rows_must_be_a_non_empty_array(specs: dict[str, ModelSpec], rows: object) -> None:
    ((field, message),) = _errors(specs["iris"], rows)
    assert field == "rows"
    assert "row" in message


def test_a_row_must_be_an_array_or_object(specs: dict[str, ModelSpec]) -> None:
    ((field, message),) = _errors(specs["iris"], [IRIS_ROW, 7])
    assert field == "rows.1"
    assert "feature order or an object keyed by feature name" in message


def test_batch_over_the_cap(specs: dict[str, ModelSpec]) -> None:
    iris = specs["iris"]
    with pytest.raises(BatchTooLarge) as caught:
        validate_rows(iris, [IRIS_ROW] * (iris.max_batch_size + 1))
    assert caught.value.max_rows == iris.max_batch_size == 64
    assert caught.value.rows == 65
    assert caught.value.field == "rows"
    assert validate_rows(iris, [IRIS_ROW] * iris.max_batch_size).shape == (64, 4)


def test_many_problems_are_capped(specs: dict[str, ModelSpec]) -> None:
    errors = _errors(specs["iris"], [["x"] * 4] * 60)
    assert len(errors) == MAX_ERRORS + 1
    assert errors[-1] == ("", f"checking stopped after the first {MAX_ERRORS} problems")


def test_custom_field_prefix(specs: dict[str, ModelSpec]) -> None:
    ((field, _),) = _errors(specs["iris"], [[1, 2, 3, math.nan]], field="inputs")
    assert field == "inputs.0.3"


def test_numpy_matrices_are_checked_too(specs: dict[str, ModelSpec]) -> None:
    iris = specs["iris"]
    assert validate_rows(iris, np.ones((3, 4))).dtype == np.float32
    ((field, _),) = _errors(iris, np.ones((3, 5)))
    assert field == "rows"
    bad = np.ones((3, 4))
    bad[1, 3] = np.nan
    ((field, _),) = _errors(iris, bad)
    assert field == "rows.1.3"
    with pytest.raises(BatchTooLarge):
        validate_rows(iris, np.ones((65, 4)))


@pytest.mark.asyncio
async def test_registry_validates_before_queueing(registry: ModelRegistry) -> None:
    with pytest.raises(InvalidInput) as caught:
        await registry.predict("iris", [{"sepal_length": 1}])
    assert {field for field, _ in caught.value.errors} == {
        "rows.0.sepal_width",
        "rows.0.petal_length",
        "rows.0.petal_width",
    }
    with pytest.raises(BatchTooLarge):
        await registry.predict("breast_cancer", [[1.0] * 30] * 129)
    assert registry.metrics()[("breast_cancer", "1.0.0")].stats.requests == 0  # nothing reached the queue
