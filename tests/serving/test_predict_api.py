"""/api/v1 prediction endpoints, the model registry and the prediction log, over HTTP."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import time

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from fastapi import FastAPI
from sklearn.datasets import load_iris
from sqlalchemy import select

from app.http.state import state_of
from app.ml.manifest import load_manifest
from app.models import PredictionRecord
from tests.conftest import assert_problem
from tests.ml.conftest import MODEL_DIR
from tests.serving.conftest import login

pytestmark = pytest.mark.asyncio(loop_scope="module")

SETOSA = [5.1, 3.5, 1.4, 0.2]
RECORDS_WAIT_S = 10.0
VIRGINICA = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}


async def test_predict_default_model_returns_label_probabilities_and_version(
    ml_client: httpx.AsyncClient,
) -> None:
    headers = await login(ml_client, "predict-default@example.com")
    response = await ml_client.post("/api/v1/predict", json={"features": SETOSA}, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "iris"
    assert body["version"] == "1.0.0"
    assert body["prediction"] == "setosa"
    assert body["class_index"] == 0
    assert set(body["probabilities"]) == {"setosa", "versicolor", "virginica"}
    assert math.isclose(sum(body["probabilities"].values()), 1.0, rel_tol=1e-5)


async def test_predict_heavy_runs_the_process_pool_model(ml_client: httpx.AsyncClient) -> None:
    headers = await login(ml_client, "predict-heavy@example.com")
    models = (await ml_client.get("/api/v1/models", headers=headers)).json()
    heavy = next(m for m in models if m["executor"] == "process")
    response = await ml_client.post(
        "/api/v1/predict-heavy", json={"features": [1.0] * len(heavy["features"])}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["model"] == heavy["name"]
    assert response.json()["prediction"] in heavy["labels"]


async def test_model_registry_lists_input_schema_and_its_example_works(ml_client: httpx.AsyncClient) -> None:
    headers = await login(ml_client, "registry@example.com")
    models = (await ml_client.get("/api/v1/models", headers=headers)).json()
    assert {m["name"] for m in models} >= {"iris", "breast_cancer", "diabetes"}
    iris = (await ml_client.get("/api/v1/models/iris", headers=headers)).json()
    assert [f["name"] for f in iris["features"]] == list(VIRGINICA)
    assert iris["labels"] == ["setosa", "versicolor", "virginica"]
    for model in models:
        done = await ml_client.post(
            f"/api/v1/models/{model['name']}/predict", json=model["example_request"], headers=headers
        )
        assert done.status_code == 200, (model["name"], done.text)
    assert_problem(await ml_client.get("/api/v1/models/no-such-model", headers=headers), 404)


async def test_batch_rows_as_arrays_or_objects_give_the_same_answers(ml_client: httpx.AsyncClient) -> None:
    headers = await login(ml_client, "batch@example.com")
    as_objects = await ml_client.post(
        "/api/v1/models/iris/predict",
        json={"rows": [dict(zip(VIRGINICA, SETOSA, strict=True)), VIRGINICA]},
        headers=headers,
    )
    as_arrays = await ml_client.post(
        "/api/v1/models/iris/predict", json={"rows": [SETOSA, list(VIRGINICA.values())]}, headers=headers
    )
    assert as_objects.status_code == as_arrays.status_code == 200
    # The same answers; each its own record in the prediction log.
    objects, arrays = as_objects.json(), as_arrays.json()
    assert objects.pop("prediction_id") != arrays.pop("prediction_id")
    assert objects == arrays
    assert [p["prediction"] for p in as_arrays.json()["predictions"]] == ["setosa", "virginica"]


def _in_process_iris_labels(rows: list[list[float]]) -> list[str]:
    """The labels of the bundled iris.onnx computed here with ONNX Runtime directly: no registry,
    no batching, no HTTP. The class is the first column with the highest probability."""
    spec = next(m for m in load_manifest(MODEL_DIR).models if m.name == "iris")
    session = ort.InferenceSession(str(MODEL_DIR / spec.file), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(
        ["probabilities"], {session.get_inputs()[0].name: np.array(rows, np.float32)}
    )
    return [spec.labels[i] for i in np.argmax(probabilities, axis=1)]


async def test_whole_iris_dataset_through_http_matches_the_bundled_model(
    ml_client: httpx.AsyncClient,
) -> None:
    """Labels over HTTP equal, row for row, the labels the model file gives when run in process
    (the model itself is checked against scikit-learn in tests/ml/test_parity.py): nothing is lost,
    reordered or mixed up between requests on the way."""
    headers = await login(ml_client, "dataset@example.com")
    rows = load_iris().data.tolist()
    responses = await asyncio.gather(  # concurrently, so requests share batches
        *(
            ml_client.post(
                "/api/v1/models/iris/predict", json={"rows": rows[start : start + 64]}, headers=headers
            )
            for start in range(0, len(rows), 64)
        )
    )
    labels: list[str] = []
    for response in responses:
        assert response.status_code == 200, response.text
        labels += [p["prediction"] for p in response.json()["predictions"]]
    expected = _in_process_iris_labels(rows)
    assert len(set(expected)) == 3  # the rows cover every class: a constant answer would not pass
    assert labels == expected


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/api/v1/predict", {"features": [1.0, 2.0, 3.0]}, 422, "features"),
        ("/api/v1/predict", {"features": [1.0, "x", 3.0, 4.0]}, 422, "features.1"),
        ("/api/v1/predict", {"features": [1.0, True, 3.0, 4.0]}, 422, "features.1"),
        ("/api/v1/predict", {"features": []}, 422, "features"),
        ("/api/v1/predict", {}, 422, "features"),
        ("/api/v1/models/iris/predict", {"rows": []}, 422, "rows"),
        ("/api/v1/models/iris/predict", {"rows": [{"sepal_length": 1.0}]}, 422, "rows.0"),
        ("/api/v1/models/iris/predict", {"rows": [{**VIRGINICA, "colour": 1.0}]}, 422, "rows.0.colour"),
        ("/api/v1/models/iris/predict", {"rows": [SETOSA] * 65}, 413, "rows"),
    ],
)
async def test_bad_input_gets_a_clear_error_naming_the_field(
    ml_client: httpx.AsyncClient, path: str, body: dict[str, object], status: int, field: str
) -> None:
    headers = await login(ml_client, "bad-input@example.com")
    problem = assert_problem(await ml_client.post(path, json=body, headers=headers), status)
    fields = [e["field"] for e in problem["errors"]]
    assert any(f == field or f.startswith(field + ".") for f in fields), fields


async def test_nan_and_infinity_are_refused(ml_client: httpx.AsyncClient) -> None:
    headers = {**(await login(ml_client, "nan@example.com")), "Content-Type": "application/json"}
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        body = b'{"features": [' + literal + b", 1, 2, 3]}"
        problem = assert_problem(await ml_client.post("/api/v1/predict", content=body, headers=headers), 422)
        assert [e["field"] for e in problem["errors"]] == ["features.0"]


async def test_prediction_endpoints_need_a_token(ml_client: httpx.AsyncClient) -> None:
    for method, path in [
        ("POST", "/api/v1/predict"),
        ("POST", "/api/v1/predict-heavy"),
        ("GET", "/api/v1/models"),
        ("GET", "/api/v1/models/iris"),
        ("POST", "/api/v1/models/iris/predict"),
        ("GET", "/api/v1/predictions"),
    ]:
        assert_problem(await ml_client.request(method, path, json={}), 401)


async def _records(
    client: httpx.AsyncClient, headers: dict[str, str], query: str = "", *, count: int = 1
) -> list[dict[str, object]]:
    """The prediction log as the API shows it, once it holds at least `count` records (the writer
    batches them off the request path); fails after RECORDS_WAIT_S with what it saw."""
    deadline = time.monotonic() + RECORDS_WAIT_S
    while True:
        response = await client.get(f"/api/v1/predictions{query}", headers=headers)
        assert response.status_code == 200, response.text
        items: list[dict[str, object]] = response.json()["items"]
        if len(items) >= count:
            return items
        assert time.monotonic() < deadline, (
            f"the prediction log shows {len(items)} record(s) after {RECORDS_WAIT_S} s, expected {count}"
        )
        await asyncio.sleep(0.02)


async def test_every_prediction_is_logged_for_its_user_only(ml_client: httpx.AsyncClient) -> None:
    alice = await login(ml_client, "log-alice@example.com")
    bob = await login(ml_client, "log-bob@example.com")
    await ml_client.post("/api/v1/predict", json={"features": SETOSA}, headers=alice)
    await ml_client.post("/api/v1/models/iris/predict", json={"rows": [SETOSA, SETOSA]}, headers=alice)
    records = await _records(ml_client, alice, count=2)
    assert len(records) == 2
    assert [r["rows"] for r in records] == [2, 1]  # newest first
    assert all(r["model"] == "iris" and r["outcome"] == "ok" for r in records)
    assert records[0]["inputs"] == [SETOSA, SETOSA]  # iris allows storing inputs (log_inputs)
    assert records[1]["inputs"] == [SETOSA]
    assert (await ml_client.get("/api/v1/predictions", headers=bob)).json()["items"] == []
    assert_problem(
        await ml_client.get(f"/api/v1/predictions?user_id={records[0]['user_id']}", headers=bob), 403
    )


async def test_models_with_log_inputs_false_keep_their_inputs_out_of_the_records(
    ml_client: httpx.AsyncClient, ml_app: FastAPI
) -> None:
    """breast_cancer and diabetes are medical data (`log_inputs: false` in the manifest): their
    records keep the model, the row count and the outcome, never the values sent."""
    registry = state_of(ml_app).resources.registry
    headers = await login(ml_client, "log-medical@example.com")
    sent: dict[str, list[list[float]]] = {}
    for name in ("breast_cancer", "diabetes"):
        spec = registry.get(name)
        assert spec.log_inputs is False
        # Values that cannot appear in a record by accident (no id, count or latency is 0.123456...).
        sent[name] = [[0.123456 + i for i in range(len(spec.features))]] * 2
        response = await ml_client.post(
            f"/api/v1/models/{name}/predict", json={"rows": sent[name]}, headers=headers
        )
        assert response.status_code == 200, response.text
    width = len(registry.get("breast_cancer").features)
    heavy = await ml_client.post(
        "/api/v1/predict-heavy", json={"features": [0.654321] * width}, headers=headers
    )
    assert heavy.status_code == 200, heavy.text
    records = await _records(ml_client, headers, count=3)
    assert [(r["model"], r["rows"], r["outcome"]) for r in records] == [
        ("breast_cancer", 1, "ok"),
        ("diabetes", 2, "ok"),
        ("breast_cancer", 2, "ok"),
    ]
    assert [r["inputs"] for r in records] == [None, None, None]
    for value in ("0.123456", "0.654321", "1.123456"):
        assert value not in json.dumps(records)
    # Not stored either, whatever the API shows.
    async with state_of(ml_app).resources.db.session() as session:
        stored = (
            await session.scalars(
                select(PredictionRecord.inputs).where(PredictionRecord.id.in_([r["id"] for r in records]))
            )
        ).all()
    assert list(stored) == [None, None, None]


async def test_prediction_log_pages_by_cursor(ml_client: httpx.AsyncClient) -> None:
    headers = await login(ml_client, "log-pages@example.com")
    for _ in range(5):
        assert (
            await ml_client.post("/api/v1/predict", json={"features": SETOSA}, headers=headers)
        ).status_code == 200
    seen = [r["id"] for r in await _records(ml_client, headers, "?limit=10", count=5)]
    assert len(seen) == 5
    walked: list[object] = []
    cursor = ""
    while True:
        page = (await ml_client.get(f"/api/v1/predictions?limit=2{cursor}", headers=headers)).json()
        walked += [r["id"] for r in page["items"]]
        if not page["next_cursor"]:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert walked == seen
    assert_problem(await ml_client.get("/api/v1/predictions?cursor=%%%", headers=headers), 422)


async def test_a_killed_model_worker_is_replaced_and_later_requests_succeed(
    ml_client: httpx.AsyncClient, ml_app: FastAPI
) -> None:
    headers = await login(ml_client, "worker-kill@example.com")
    registry = state_of(ml_app).resources.registry
    heavy = registry.heavy_model
    width = len(registry.get(heavy).features)
    before = registry.worker_pids(heavy)
    assert before
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    statuses: list[int] = []
    for _ in range(200):
        response = await ml_client.post(
            "/api/v1/predict-heavy", json={"features": [1.0] * width}, headers=headers
        )
        statuses.append(response.status_code)
        if response.status_code == 200:
            break
        # While the new pool starts: 503 (the crash, retry) or, on a host slow enough that the new
        # workers take longer than the model's time limit, 504 for a request that waited for them.
        if response.status_code == 504:
            assert_problem(response, 504)
        else:
            assert_problem(response, 503)
            assert response.headers["retry-after"]
        await asyncio.sleep(0.05)
    assert statuses[-1] == 200, statuses
    assert set(registry.worker_pids(heavy)).isdisjoint(before)


async def test_open_inference_protocol_in_process(ml_client: httpx.AsyncClient) -> None:
    """The /v2 routes' answers and errors (the tritonclient test drives them over the network)."""
    headers = await login(ml_client, "oip-inprocess@example.com")
    assert (await ml_client.get("/v2/health/live", headers=headers)).json() == {"live": True}
    assert (await ml_client.get("/v2/health/ready", headers=headers)).json() == {"ready": True}
    assert (await ml_client.get("/v2/models/iris/ready", headers=headers)).json() == {
        "name": "iris",
        "ready": True,
    }
    heavy = (await ml_client.get("/v2/models/breast_cancer", headers=headers)).json()
    assert heavy["platform"] == "sklearn_skops"
    tensor = {
        "name": "input",
        "shape": [2, 4],
        "datatype": "FP64",
        "data": [SETOSA, list(VIRGINICA.values())],
    }
    done = await ml_client.post(
        "/v2/models/iris/infer", json={"id": "r1", "inputs": [tensor]}, headers=headers
    )
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["id"] == "r1"
    assert {o["name"]: o["data"] for o in body["outputs"]}["label"] == ["setosa", "virginica"]
    flat = {**tensor, "shape": [1, 4], "data": SETOSA}  # one row, flat (row-major): shape [rows, features]
    one = await ml_client.post(
        "/v2/models/iris/infer", json={"inputs": [flat], "outputs": [{"name": "label"}]}, headers=headers
    )
    assert one.json()["outputs"] == [{"name": "label", "shape": [1], "datatype": "BYTES", "data": ["setosa"]}]
    cases = [
        ({"inputs": [tensor, tensor]}, 400, "one input tensor"),
        ({"inputs": [{**tensor, "datatype": "BYTES"}]}, 400, "numeric"),
        ({"inputs": [{**tensor, "shape": [3, 4]}]}, 400, "values"),
        ({"inputs": [{**tensor, "shape": [4], "data": SETOSA}]}, 400, "shape [rows, 4]"),
        ({"inputs": [tensor], "outputs": [{"name": "colour"}]}, 400, "Unknown output"),
        ({"inputs": [tensor], "parameters": {"binary_data_output": True}}, 400, "binary"),
        ({"inputs": [{**tensor, "data": [[1, 2, 3, "x"], SETOSA]}]}, 422, "inputs.0.data"),
        ({"inputs": "nope"}, 422, "inputs"),
    ]
    for request, status, fragment in cases:
        failed = await ml_client.post("/v2/models/iris/infer", json=request, headers=headers)
        assert failed.status_code == status, (request, failed.text)
        assert set(failed.json()) == {"error"}
        assert fragment in failed.json()["error"], failed.json()
    malformed = await ml_client.post("/v2/models/iris/infer", content=b"{nope", headers=headers)
    assert malformed.status_code == 400
    assert set(malformed.json()) == {"error"}
