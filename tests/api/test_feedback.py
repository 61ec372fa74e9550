"""Ground truth (issue 24): every answer carries its prediction's id; its owner sends the truth for
it once, and each row is scored against what was answered (hand-checked here); every refusal is a
clear problem naming the field."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

import httpx
import pytest

from app.http.state import state_of
from app.models.base import utcnow
from app.repositories.predictions import PredictionRepository
from tests.api.test_api_keys import make_key
from tests.conftest import Headers, assert_problem
from tests.ops.conftest import running_app, user

IRIS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


async def _feedback(
    client: httpx.AsyncClient, headers: Headers, prediction_id: str, truth: list[Any]
) -> httpx.Response:
    """The truth sent, again while the record is on its way (409 prediction-not-recorded-yet)."""
    for _ in range(100):
        response = await client.post(
            f"/api/v1/predictions/{prediction_id}/feedback", json={"truth": truth}, headers=headers
        )
        if response.status_code != 409 or not response.json()["type"].endswith(
            "/prediction-not-recorded-yet"
        ):
            return response
        await asyncio.sleep(0.02)
    raise AssertionError("the record was never written")


@pytest.fixture
async def served(database_url: str) -> Any:
    async with running_app(database_url, ml_enabled=True, prediction_log_flush_ms=20) as (app, client):
        yield app, client


async def test_every_answer_carries_the_id_its_record_is_listed_under(served: Any) -> None:
    _, client = served
    alice = await user(client)
    one = (await client.post("/api/v1/predict", json={"features": IRIS[0]}, headers=alice)).json()
    rows = (await client.post("/api/v1/models/iris/predict", json={"rows": IRIS}, headers=alice)).json()
    infer = {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": IRIS[0]}],
        "id": "mine",
    }
    v2 = (await client.post("/v2/models/iris/infer", json=infer, headers=alice)).json()
    assert v2["id"] == "mine"  # the protocol's id echoes the request's; ours is in `parameters`
    ids = [one["prediction_id"], rows["prediction_id"], v2["parameters"]["prediction_id"]]
    assert len({uuid.UUID(i).version for i in ids}) == 1
    assert len(set(ids)) == 3
    for _ in range(100):
        listed = (await client.get("/api/v1/predictions", headers=alice)).json()["items"]
        if len(listed) == 3:
            break
        await asyncio.sleep(0.02)
    assert [r["prediction_id"] for r in listed] == ids[::-1]  # newest first
    assert [r["rows"] for r in listed] == [1, 2, 1]


async def test_each_row_is_scored_against_the_answer(served: Any) -> None:
    _, client = served
    alice = await user(client)
    answer = (await client.post("/api/v1/models/iris/predict", json={"rows": IRIS}, headers=alice)).json()
    first, second = answer["predictions"]
    wrong = next(label for label in first["probabilities"] if label != second["prediction"])
    response = await _feedback(client, alice, answer["prediction_id"], [first["prediction"], wrong])
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["model"] == "iris"
    assert body["version"] == "1.0.0"
    scored = body["rows"]
    assert [r["row"] for r in scored] == [0, 1]
    assert scored[0]["correct"] is True
    assert scored[1]["correct"] is False
    assert scored[0]["prediction"] == first["prediction"]
    assert scored[1]["truth"] == wrong
    # -ln of the probability the answer gave the true label (clipped at 1e-15, as scikit-learn).
    assert scored[0]["log_loss"] == pytest.approx(-math.log(first["probabilities"][first["prediction"]]))
    assert scored[1]["log_loss"] == pytest.approx(-math.log(max(second["probabilities"][wrong], 1e-15)))
    assert scored[0]["abs_error"] is None

    example = (await client.get("/api/v1/models/diabetes", headers=alice)).json()["example_request"]
    value = (await client.post("/api/v1/models/diabetes/predict", json=example, headers=alice)).json()
    predicted = value["predictions"][0]["prediction"]
    regressed = await _feedback(client, alice, value["prediction_id"], [predicted + 12.5])
    assert regressed.status_code == 201, regressed.text
    (row,) = regressed.json()["rows"]
    assert row["abs_error"] == pytest.approx(12.5)
    assert row["correct"] is None
    assert row["log_loss"] is None


async def test_refusals_are_problems_naming_the_field(served: Any) -> None:
    app, client = served
    alice, bob = await user(client), await user(client)
    iris = (await client.post("/api/v1/predict", json={"features": IRIS[0]}, headers=alice)).json()
    pid = iris["prediction_id"]
    unknown = assert_problem(await _feedback(client, alice, pid, ["daisy"]), 422)
    assert unknown["errors"][0]["field"] == "truth.0"
    assert "setosa" in unknown["detail"]
    number = assert_problem(await _feedback(client, alice, pid, [1]), 422)
    assert number["errors"][0]["field"] == "truth.0"
    assert "classifier" in number["detail"]
    count = assert_problem(await _feedback(client, alice, pid, ["setosa", "setosa"]), 422)
    assert count["errors"][0]["field"] == "truth"
    assert assert_problem(await _feedback(client, bob, pid, ["setosa"]), 404)["type"].endswith("/not-found")
    never = assert_problem(await _feedback(client, alice, str(uuid.uuid4()), ["setosa"]), 404)
    assert never["type"].endswith("/not-found")
    # A key needs the scope; with it, the owner's truth is taken once.
    reader = await make_key(client, alice, ["predictions:read"])
    refused = await _feedback(client, {"Authorization": f"Bearer {reader['key']}"}, pid, ["setosa"])
    assert_problem(refused, 403)
    writer = await make_key(client, alice, ["feedback:write"])
    as_key = {"Authorization": f"Bearer {writer['key']}"}
    assert (await _feedback(client, as_key, pid, ["setosa"])).status_code == 201
    again = assert_problem(await _feedback(client, alice, pid, ["versicolor"]), 409)
    assert again["type"].endswith("/feedback-exists")

    example = (await client.get("/api/v1/models/diabetes", headers=alice)).json()["example_request"]
    value = (await client.post("/api/v1/models/diabetes/predict", json=example, headers=alice)).json()
    label = assert_problem(await _feedback(client, alice, value["prediction_id"], ["high"]), 422)
    assert label["errors"][0]["field"] == "truth.0"
    assert "regressor" in label["detail"]

    # A prediction that failed has no answer to compare.
    failed_id = uuid.uuid4()
    async with state_of(app).resources.db.session() as session:
        me = (await client.get("/api/v1/users/me", headers=alice)).json()["id"]
        await PredictionRepository(session).add_many([{
            "prediction_id": failed_id, "user_id": me, "model": "iris", "version": "1.0.0", "rows": 1,
            "latency_ms": 0.0, "outcome": "timeout", "created_at": utcnow(),
        }])  # fmt: skip
        await session.commit()
    failed = assert_problem(await _feedback(client, alice, str(failed_id), ["setosa"]), 409)
    assert failed["type"].endswith("/prediction-has-no-outputs")


async def test_a_truth_sent_before_its_record_is_written_is_told_to_retry(database_url: str) -> None:
    async with running_app(database_url, ml_enabled=True, prediction_log_flush_ms=600_000) as (_, client):
        alice = await user(client)
        pid = (await client.post("/api/v1/predict", json={"features": IRIS[0]}, headers=alice)).json()[
            "prediction_id"
        ]
        early = await client.post(
            f"/api/v1/predictions/{pid}/feedback", json={"truth": ["setosa"]}, headers=alice
        )
        assert assert_problem(early, 409)["type"].endswith("/prediction-not-recorded-yet")
        assert early.headers["Retry-After"] == "1"


async def test_the_bulk_form_records_some_and_names_the_refused_by_index(served: Any) -> None:
    _, client = served
    alice = await user(client)
    ids = [
        (await client.post("/api/v1/predict", json={"features": IRIS[i % 2]}, headers=alice)).json()[
            "prediction_id"
        ]
        for i in range(3)
    ]
    assert (
        await _feedback(client, alice, ids[2], ["setosa"])
    ).status_code == 201  # also waits for the writes
    items = [
        {"prediction_id": ids[0], "truth": ["setosa"]},
        {"prediction_id": ids[1], "truth": ["daisy"]},
        {"prediction_id": ids[2], "truth": ["setosa"]},
        {"prediction_id": ids[0], "truth": ["virginica"]},
    ]
    response = await client.post("/api/v1/predictions/feedback", json={"items": items}, headers=alice)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["prediction_id"] for r in body["recorded"]] == [ids[0]]
    refused = {r["index"]: r for r in body["refused"]}
    assert sorted(refused) == [1, 2, 3]
    assert refused[1]["status"] == 422
    assert refused[1]["errors"][0]["field"] == "truth.0"
    assert refused[2]["type"].endswith("/feedback-exists")
    assert refused[3]["type"].endswith("/feedback-exists")
    # The one recorded stays recorded.
    again = assert_problem(await _feedback(client, alice, ids[0], ["setosa"]), 409)
    assert again["type"].endswith("/feedback-exists")
