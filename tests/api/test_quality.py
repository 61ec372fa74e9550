"""Live quality per version (issue 24): accuracy, log loss, MAE and RMSE over a window of labelled
rows, checked against figures worked out by hand; the window as the newest N or a time range."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
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
    nothing = empty["versions"][0]
    assert {k: v for k, v in nothing.items() if k != "drift"} == {"version": "1.0.0", "labelled": 0,
        "accuracy": None, "log_loss": None, "mae": None, "rmse": None}  # fmt: skip
    drift = nothing["drift"]
    assert drift["rows"] == 0
    assert all(shift["psi"] is None for shift in [*drift["features"], drift["prediction"]])

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


async def test_drift_flags_the_shifted_feature_either_way_and_not_the_others(
    served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Iris rows drawn from its own data (fixed seed) in one hour, then with petal_length moved up
    1.5 cm in the next, and sepal_width down 1 cm in the one after (the log's clock set to each
    hour): each hour's window against the bundled model's reference, made from its training rows."""
    from sklearn.datasets import load_iris

    from app.services import prediction_log

    app, client = served
    admin, _ = await _admin(app, client)
    rows = np.random.default_rng(7).choice(load_iris().data, size=640)
    hours = {"unshifted": (None, 0.0), "petal_length up": (2, 1.5), "sepal_width down": (1, -1.0)}
    for hour, (column, shift) in enumerate(hours.values()):
        moved = rows.copy()
        if column is not None:
            moved[:, column] += shift
        monkeypatch.setattr(
            prediction_log, "utcnow", lambda hour=hour: T0 + timedelta(hours=hour, seconds=30)
        )
        for start in range(0, len(moved), 64):
            batch = moved[start : start + 64].round(2).tolist()
            ok = await client.post("/api/v1/models/iris/predict", json={"rows": batch}, headers=admin)
            assert ok.status_code == 200, ok.text
        await _drift_of_hour(client, admin, hour, rows=640)  # written before the clock moves on

    flagged = {}
    for hour, name in enumerate(hours):
        drift = await _drift_of_hour(client, admin, hour, rows=640)
        assert drift["method"] == "psi"
        flagged[name] = sorted(shift["name"] for shift in drift["features"] if shift["drifted"])
        if name == "unshifted":
            assert all(shift["psi"] < 0.1 for shift in [*drift["features"], drift["prediction"]]), drift
    assert flagged == {
        "unshifted": [],
        "petal_length up": ["petal_length"],
        "sepal_width down": ["sepal_width"],
    }

    # The newest 640 rows: the last hour's period alone; the newest 641: the two last hours'.
    newest = (await client.get("/api/v1/models/iris/quality", params={"last": 640}, headers=admin)).json()
    assert newest["versions"][0]["drift"]["rows"] == 640
    assert newest["versions"][0]["drift"]["since"] == (T0 + timedelta(hours=2)).isoformat().replace(
        "+00:00", "Z"
    )
    two = (await client.get("/api/v1/models/iris/quality", params={"last": 641}, headers=admin)).json()
    assert two["versions"][0]["drift"]["rows"] == 1280

    # The gauges a dashboard reads (over the newest 1,000 rows: the two last hours).
    scraped = (await client.get("/metrics")).text
    assert 'model_drift_psi{feature="sepal_width",model="iris",version="1.0.0"}' in scraped
    assert 'model_prediction_drift_psi{model="iris",version="1.0.0"}' in scraped
    assert 'model_drift_rows{model="iris",version="1.0.0"} 1280.0' in scraped


async def _drift_of_hour(client: Any, admin: dict[str, str], hour: int, *, rows: int) -> Any:
    """The drift of iris 1.0.0 in the hour T0 + `hour`, once its `rows` are written (within 10 s)."""
    window = {"since": (T0 + timedelta(hours=hour)).isoformat(),
              "until": (T0 + timedelta(hours=hour + 1)).isoformat()}  # fmt: skip
    for _ in range(200):
        quality = (await client.get("/api/v1/models/iris/quality", params=window, headers=admin)).json()
        drift = quality["versions"][0]["drift"]
        if drift["rows"] >= rows:
            assert drift["rows"] == rows
            return drift
        await asyncio.sleep(0.05)
    raise AssertionError(f"{rows} rows not counted in hour {hour}: {drift}")


async def test_the_newest_n_rows_of_drift_are_found_across_many_periods(served: Any) -> None:
    """300 periods of counts, 3 rows each: the newest N rows start at the period they reach, read
    a batch of periods at a time (64, 128, ...), and N beyond them all is every period."""
    app, _ = served
    periods = [T0 + timedelta(minutes=10 * p) for p in range(300)]
    async with state_of(app).resources.db.session() as session:
        repo = PredictionRepository(session)
        await repo.add_drift_counts([
            {"model": "m", "version": "1", "period": period, "feature": -1, "bin": b, "rows": 1}
            for period in periods for b in range(3)
        ])  # fmt: skip
        await session.commit()
        for last, start in ((1, 299), (3, 299), (4, 298), (600, 100), (900, 0)):
            assert await repo.drift_start("m", "1", last, counted=-1) == periods[start], last
        assert await repo.drift_start("m", "1", 901, counted=-1) is None
        # Added again: the counts add up (another worker's rows for the same period).
        again = {"model": "m", "version": "1", "period": periods[-1], "feature": -1, "bin": 0, "rows": 5}
        await repo.add_drift_counts([again])
        await session.commit()
        assert await repo.drift_start("m", "1", 8, counted=-1) == periods[-1]
        newest = await repo.drift_sums("m", "1", since=periods[-1], until=None)
        assert sorted(newest) == [(-1, 0, 6), (-1, 1, 1), (-1, 2, 1)]


async def test_drift_that_cannot_be_counted_loses_no_record(
    served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.services import prediction_log

    def broken(*_: Any) -> Any:
        raise ValueError("a reference that does not fit")

    monkeypatch.setattr(prediction_log, "bin_counts", broken)
    app, client = served
    admin, _ = await _admin(app, client)
    answer = await client.post("/api/v1/models/iris/predict", json={"rows": IRIS}, headers=admin)
    assert answer.status_code == 200, answer.text
    sent = await _feedback(client, admin, answer.json()["prediction_id"], ["setosa", "virginica"])
    assert sent.status_code == 201, sent.text  # the record was written
    quality = (await client.get("/api/v1/models/iris/quality", headers=admin)).json()["versions"][0]
    assert quality["labelled"] == 2
    assert quality["drift"]["rows"] == 0
