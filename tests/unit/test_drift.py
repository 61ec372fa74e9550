"""Drift's arithmetic (app.ml.drift): PSI on a hand-checked case, the bins a reference cuts, and a
shifted sample flagged while an unshifted one is not, either way (fixed seeds)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.ml.drift import ANSWERS, DRIFT_THRESHOLD, EPSILON, bin_counts, histogram, make_reference, psi
from app.ml.manifest import ModelSpec


def test_psi_matches_the_figure_worked_out_by_hand() -> None:
    # Window 75/25 against a reference of 50/50:
    # (0.75 - 0.5) ln(0.75 / 0.5) + (0.25 - 0.5) ln(0.25 / 0.5) = 0.25 ln 1.5 + 0.25 ln 2
    assert psi([0.5, 0.5], [75, 25]) == pytest.approx(0.25 * math.log(1.5) + 0.25 * math.log(2))
    assert psi([0.5, 0.5], [50, 50]) == 0.0
    assert psi([0.5, 0.5], [0, 0]) is None  # no rows: no figure
    # An empty bin counts as EPSILON, not zero: finite.
    assert psi([1.0, 0.0], [0, 10]) == pytest.approx((1 - EPSILON) * math.log(1 / EPSILON) * 2)


def test_a_histogram_cuts_at_deciles_and_a_value_on_an_edge_falls_above_it() -> None:
    h = histogram(np.arange(1, 101, dtype=np.float64))
    assert h.edges == (10.9, 20.8, 30.7, 40.6, 50.5, 60.4, 70.3, 80.2, 90.1)
    assert h.fractions == (0.1,) * 10
    repeated = histogram(np.array([1.0] * 50 + [2.0] * 50))
    assert repeated.edges == (1.0, 1.5, 2.0)  # repeated quantiles merged
    assert repeated.fractions == (0.0, 0.5, 0.0, 0.5)


@pytest.mark.parametrize("shift", [1.0, -1.0], ids=["up", "down"])
def test_a_shifted_feature_is_flagged_and_an_unshifted_one_is_not(shift: float) -> None:
    reference = np.random.default_rng(1).normal(size=(5000, 2))
    live = np.random.default_rng(2).normal(size=(2000, 2))
    live[:, 0] += shift
    ref = make_reference("regression", [], reference, reference[:, :1])
    spec = _spec(ref.model_dump(mode="json"))
    counts = bin_counts(spec, live, live[:, :1])
    by_feature: dict[int, list[int]] = {}
    for feature, bin_, n in counts:
        by_feature.setdefault(feature, [0] * 10)[bin_] = n
    moved = psi(ref.features[0].fractions, by_feature[0])
    still = psi(ref.features[1].fractions, by_feature[1])
    assert moved is not None
    assert moved > DRIFT_THRESHOLD
    assert still is not None
    assert still < 0.05
    assert sum(by_feature[ANSWERS]) == 2000  # the answers' bins, each row once


def test_a_classifiers_answers_are_counted_by_label() -> None:
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    outputs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.5, 0.5]])  # a tie is the first label
    ref = make_reference("classification", ["a", "b"], x, outputs)
    assert ref.prediction.edges == ()
    assert ref.prediction.fractions == (0.5, 0.5)
    spec = _spec(ref.model_dump(mode="json"), labels=["a", "b"], features=1)
    answers = [(b, n) for f, b, n in bin_counts(spec, x, outputs) if f == ANSWERS]
    assert answers == [(0, 2), (1, 2)]


def test_a_reference_that_does_not_fit_its_entry_is_refused() -> None:
    ref = make_reference("regression", [], np.ones((10, 2)), np.ones((10, 1))).model_dump(mode="json")
    with pytest.raises(ValueError, match="one histogram per feature"):
        _spec(ref, features=3)
    with pytest.raises(ValueError, match="one fraction per label"):
        _spec(ref, labels=["a", "b"])
    bad = {**ref, "features": [{"edges": [2.0, 1.0], "fractions": [0.2, 0.3, 0.5]}] * 2}
    with pytest.raises(ValueError, match="strictly increasing"):
        _spec(bad)


def _spec(reference: dict[str, object], *, labels: list[str] | None = None, features: int = 2) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": "m",
            "version": "1",
            "task": "classification" if labels else "regression",
            "format": "onnx",
            "file": "m.onnx",
            "sha256": "0" * 64,
            "executor": "thread",
            "features": [{"name": f"x{i}"} for i in range(features)],
            "labels": labels or [],
            "batching": {"max_batch_size": 64, "max_batch_wait_ms": 1},
            "timeout_ms": 100,
            "max_queue": 10,
            "log_inputs": False,
            "reference": reference,
        }
    )
