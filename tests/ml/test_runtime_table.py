"""A runtime kind is one entry of app.ml.formats.RUNTIMES: a toy kind defined here, added through
the table alone, is taken by `models add` and served over /api/v1 and /v2 like the bundled ones."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from app.http.state import state_of
from app.main import create_app
from app.ml.errors import ModelLoadError
from app.ml.formats import RUNTIMES, RuntimeKind, known, platform
from app.ml.importer import add_model
from app.ml.manifest import ModelSpec, load_manifest
from app.ml.runtimes.base import Found, ThreadContext, ThreadRuntime
from tests.conftest import empty_tables, make_settings
from tests.lifespan import lifespan
from tests.ml.conftest import MakeModelDir
from tests.serving.conftest import login

# --- the toy kind: a linear classifier whose file is its JSON weights ------------------------------


def _read(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        document = json.loads(data)
        weights = np.asarray(document["weights"], dtype=np.float64)  # (features, classes)
        bias = np.asarray(document["bias"], dtype=np.float64)
        labels = [str(label) for label in document["labels"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(where, f"not toy-linear weights: {exc}") from None
    if weights.ndim != 2 or bias.shape != (weights.shape[1],) or len(labels) != weights.shape[1]:
        raise ModelLoadError(where, "weights, bias and labels disagree")
    return weights, bias, labels


class ToyLinear(ThreadRuntime):
    def __init__(self, spec: ModelSpec, data: bytes, where: str, threads: ThreadContext) -> None:
        super().__init__(spec, threads.executor)
        self.weights, self.bias, _ = _read(data, where)

    def compute(self, x: np.ndarray) -> np.ndarray:
        logits = x.astype(np.float64) @ self.weights + self.bias
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)


def build(spec: ModelSpec, data: bytes, where: str, threads: ThreadContext) -> ToyLinear:
    return ToyLinear(spec, data, where, threads).checked(where)


def inspect(data: bytes, where: str, trusted_types: Sequence[str]) -> Found:
    weights, _, labels = _read(data, where)
    return Found(weights.shape[0], tuple(labels), classifier=True, feature_names=None)


TOY = RuntimeKind(
    format="toy-linear",
    title="toy linear",
    suffix=".toylin",
    executor="thread",
    platform="toy_linear",
    implementation=__name__,
)
WEIGHTS = {
    "weights": [[2.0, -1.0, 0.0], [0.0, 1.0, -2.0]],
    "bias": [0.0, 0.5, 1.0],
    "labels": ["x", "y", "z"],
}


def expected(row: list[float]) -> dict[str, float]:
    logits = [
        sum(v * w[k] for v, w in zip(row, WEIGHTS["weights"], strict=True)) + WEIGHTS["bias"][k]
        for k in range(3)
    ]
    total = sum(math.exp(v) for v in logits)
    return {label: math.exp(v) / total for label, v in zip(WEIGHTS["labels"], logits, strict=True)}


@pytest.fixture
def toy_kind(monkeypatch: pytest.MonkeyPatch) -> RuntimeKind:
    monkeypatch.setitem(RUNTIMES, TOY.format, TOY)
    return TOY


# --- the test ---------------------------------------------------------------------------------------


async def test_a_runtime_added_to_the_table_alone_is_added_and_served_over_v1_and_v2(
    toy_kind: RuntimeKind, make_model_dir: MakeModelDir, tmp_path: Path, database_url: str
) -> None:
    model_dir = make_model_dir(only=("iris",))
    source = tmp_path / "scores.toylin"
    source.write_text(json.dumps(WEIGHTS))
    spec = add_model(model_dir, source, name="toy", version="1", features=["a", "b"])
    assert (spec.format, spec.executor, spec.labels) == ("toy-linear", "thread", ("x", "y", "z"))
    assert load_manifest(model_dir).find("toy", "1") == spec
    assert platform("toy-linear") == "toy_linear"

    application: FastAPI = create_app(
        make_settings(database_url, ml_enabled=True, ml_model_dir=model_dir, rate_limit_enabled=False)
    )
    rows = [[1.0, 0.0], [0.0, 2.0]]
    async with (
        lifespan(application),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t") as client,
    ):
        try:
            await _serves_the_toy(client, await login(client, "toy-runtime@example.com"), rows)
        finally:
            await empty_tables(state_of(application).resources.db.engine)


async def _serves_the_toy(
    client: httpx.AsyncClient, headers: dict[str, str], rows: list[list[float]]
) -> None:
    v1 = await client.post("/api/v1/models/toy/predict", json={"rows": rows}, headers=headers)
    assert v1.status_code == 200, v1.text
    predictions = v1.json()["predictions"]
    for row, prediction in zip(rows, predictions, strict=True):
        want = expected(row)
        assert prediction["prediction"] == max(want, key=want.__getitem__)
        assert prediction["probabilities"] == pytest.approx(want, abs=1e-6)
    assert v1.json()["version"] == "1"

    metadata = await client.get("/v2/models/toy", headers=headers)
    assert metadata.status_code == 200, metadata.text
    assert metadata.json()["platform"] == "toy_linear"
    tensor = {"name": "input", "shape": [2, 2], "datatype": "FP32", "data": rows}
    v2 = await client.post("/v2/models/toy/infer", json={"inputs": [tensor]}, headers=headers)
    assert v2.status_code == 200, v2.text
    outputs = {o["name"]: o["data"] for o in v2.json()["outputs"]}
    assert outputs["label"] == ["x", "y"]
    assert outputs["probabilities"] == pytest.approx(
        [p for row in rows for p in expected(row).values()], abs=1e-6
    )


def test_a_format_outside_the_table_is_set_aside_with_its_reason(make_model_dir: MakeModelDir) -> None:
    """Without the entry the same manifest's toy version is refused by name, the rest served."""

    def add_toy(manifest: dict[str, object]) -> None:
        models = manifest["models"]
        assert isinstance(models, list)
        iris = next(m for m in models if m["name"] == "iris")
        models.append({**iris, "name": "toy", "format": "toy-linear", "trusted_types": []})

    manifest = load_manifest(make_model_dir(add_toy, only=("iris",)))
    assert [r.reason for r in manifest.rejected] == [
        f"manifest entry 1 refused: format: 'toy-linear' is not a runtime here (formats: {known()})"
    ]
    assert platform("toy-linear") == "toy-linear"  # a name, never a KeyError (a 500)
