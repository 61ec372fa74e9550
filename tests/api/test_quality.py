"""Live quality per version (issue 24): accuracy, log loss, MAE and RMSE over a window of labelled
rows, checked against figures worked out by hand; the window as the newest N or a time range."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from app.core.ids import new_prediction_id
from app.http.state import state_of
from app.models.base import utcnow
from app.repositories.predictions import PredictionRepository
from tests.api.test_feedback import IRIS, _feedback
from tests.conftest import assert_problem
from tests.ops.conftest import running_app, user

T0 = datetime(2026, 12, 1, tzinfo=UTC)


async def _labelled(app: Any, user_id: int, model: str, version: str, rows: list[dict[str, Any]]) -> None:
    """Feedback rows as the service scores them, each on a record of its own, predicted at T0 + i h."""
    async with state_of(app).resources.db.session() as session:
        repo = PredictionRepository(session)
        for i, row in enumerate(rows):
            pid = new_prediction_id()
            await repo.add_many([{
                "prediction_id": pid, "user_id": user_id, "model": model, "version": version, "rows": 1,
                "latency_ms": 1.0, "outcome": "ok", "outputs": [0.0], "created_at": T0 + timedelta(hours=i),
            }])  # fmt: skip
            record = await repo.by_prediction_id(pid)
            assert record is not None
            await repo.add_feedback([{
                "record_id": record.id, "user_id": user_id, "model": model, "version": version, "row": 0,
                "predicted_at": T0 + timedelta(hours=i), "created_at": utcnow(), **row,
            }])  # fmt: skip
        await session.commit()


async def _admin(app: Any, client: Any) -> tuple[dict[str, str], int]:
    headers = await user(client)
    admin_id = (await client.get("/api/v1/users/me", headers=headers)).json()["id"]
    async with state_of(app).resources.db.engine.begin() as conn:
        await conn.execute(text("UPDATE users SET is_admin = true WHERE id = :id"), {"id": admin_id})
    return headers, admin_id


@pytest.fixture
async def served(database_url: str) -> Any:
    async with running_app(
        database_url, ml_enabled=True, prediction_log_flush_ms=20, metrics_enabled=True
    ) as (app, client):
        yield app, client


async def test_figures_match_a_hand_checked_set_over_each_window(served: Any) -> None:
    app, client = served
    admin, admin_id = await _admin(app, client)
    # iris 1.0.0, oldest first: right (ln 0.5), wrong (ln 0.25), right (ln 0.8), right (ln 1.0).
    losses = [-math.log(0.5), -math.log(0.25), -math.log(0.8), 0.0]
    marks = zip([1, 0, 1, 1], losses, strict=True)
    await _labelled(app, admin_id, "iris", "1.0.0", [
        {"label": "setosa", "correct": c, "log_loss": loss} for c, loss in marks
    ])  # fmt: skip
    # diabetes 1.0.0: errors 3, 4, 0, 5.
    await _labelled(app, admin_id, "diabetes", "1.0.0", [
        {"value": 100.0, "abs_error": e} for e in [3.0, 4.0, 0.0, 5.0]
    ])  # fmt: skip

    every = (await client.get("/api/v1/models/iris/quality", headers=admin)).json()
    assert every["task"] == "classification"
    assert every["window"] == "last 1000 labelled"
    (v1,) = every["versions"]
    assert v1["version"] == "1.0.0"
    assert v1["labelled"] == 4
    assert v1["accuracy"] == pytest.approx(0.75)
    assert v1["log_loss"] == pytest.approx(sum(losses) / 4)
    assert v1["mae"] is None
    assert v1["rmse"] is None

    newest = (await client.get("/api/v1/models/iris/quality", params={"last": 2}, headers=admin)).json()
    assert newest["versions"][0]["labelled"] == 2
    assert newest["versions"][0]["accuracy"] == pytest.approx(1.0)
    assert newest["versions"][0]["log_loss"] == pytest.approx((losses[2] + losses[3]) / 2)
    # Predicted in [T0 + 1 h, T0 + 3 h): the second and third.
    ranged = (await client.get("/api/v1/models/iris/quality", params={
        "since": (T0 + timedelta(hours=1)).isoformat(), "until": (T0 + timedelta(hours=3)).isoformat(),
    }, headers=admin)).json()  # fmt: skip
    assert ranged["versions"][0]["labelled"] == 2
    assert ranged["versions"][0]["accuracy"] == pytest.approx(0.5)

    regressor = (await client.get("/api/v1/models/diabetes/quality", headers=admin)).json()["versions"][0]
    assert regressor["mae"] == pytest.approx(3.0)
    assert regressor["rmse"] == pytest.approx(math.sqrt((9 + 16 + 0 + 25) / 4))
    assert regressor["accuracy"] is None
    # A window with nothing in it: the version is there, its figures null.
    empty = (
        await client.get("/api/v1/models/iris/quality", params={"until": T0.isoformat()}, headers=admin)
    ).json()
    assert empty["versions"] == [{"version": "1.0.0", "labelled": 0, "accuracy": None, "log_loss": None,
                                  "mae": None, "rmse": None}]  # fmt: skip

    both = assert_problem(await client.get("/api/v1/models/iris/quality", params={
        "last": 5, "since": T0.isoformat()}, headers=admin), 422)  # fmt: skip
    assert both["errors"][0]["field"] == "last"
    before = (T0 - timedelta(hours=1)).isoformat()
    backwards = assert_problem(await client.get("/api/v1/models/iris/quality", params={
        "since": T0.isoformat(), "until": before}, headers=admin), 422)  # fmt: skip
    assert backwards["errors"][0]["field"] == "until"
    assert_problem(await client.get("/api/v1/models/nope/quality", headers=admin), 404)
    # A version no longer loaded here still shows, by its feedback.
    await _labelled(app, admin_id, "iris", "0.9.0", [{"label": "setosa", "correct": 0, "log_loss": 1.0}])
    shown = (await client.get("/api/v1/models/iris/quality", headers=admin)).json()["versions"]
    assert [(v["version"], v["labelled"], v["accuracy"]) for v in shown] == [
        ("0.9.0", 1, 0.0),
        ("1.0.0", 4, 0.75),
    ]
    not_admin = await user(client)
    assert_problem(await client.get("/api/v1/models/iris/quality", headers=not_admin), 403)


async def test_feedback_sent_through_the_api_moves_the_figures(served: Any) -> None:
    app, client = served
    admin, _ = await _admin(app, client)
    answer = (await client.post("/api/v1/models/iris/predict", json={"rows": IRIS}, headers=admin)).json()
    first, second = (p["prediction"] for p in answer["predictions"])
    wrong = next(label for label in ("setosa", "versicolor", "virginica") if label != second)
    sent = await _feedback(client, admin, answer["prediction_id"], [first, wrong])
    assert sent.status_code == 201, sent.text
    quality = (await client.get("/api/v1/models/iris/quality", headers=admin)).json()["versions"][0]
    assert quality["labelled"] == 2
    assert quality["accuracy"] == pytest.approx(0.5)
    assert quality["log_loss"] == pytest.approx(sum(r["log_loss"] for r in sent.json()["rows"]) / 2)
