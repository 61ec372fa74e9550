"""The prediction log writer: batched writes off the request path, a bounded queue that drops
(and counts) rather than slowing predictions, and nothing queued lost at shutdown."""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from app.models import PredictionRecord
from app.services.prediction_log import PredictionEvent, PredictionLog
from tests.conftest import MakeUser


def _dropped_total() -> float:
    return REGISTRY.get_sample_value("prediction_log_dropped_total") or 0.0


async def _count(app: FastAPI) -> int:
    async with app.state.resources.session_factory() as session:
        return int(await session.scalar(select(func.count()).select_from(PredictionRecord)) or 0)


async def test_a_full_queue_drops_and_counts_and_close_writes_the_rest(
    app: FastAPI, make_user: MakeUser
) -> None:
    await make_user("log-writer@example.com")  # user 1: the records' foreign key
    log = PredictionLog(app.state.resources.session_factory, queue_size=3, batch_size=2, flush_interval_s=60)
    before = _dropped_total()
    for _ in range(5):  # the writer is not running: the queue fills after three
        log.record(PredictionEvent(1, "iris", "1.0.0", 1, 0.5, "ok"))
    assert log.dropped == 2
    assert _dropped_total() - before == 2
    log.start()
    await log.close()  # the three queued records are written, in batches of two, before it stops
    assert log.written == 3
    assert await _count(app) == 3


async def test_records_are_written_in_batches(app: FastAPI, make_user: MakeUser) -> None:
    await make_user("log-batches@example.com")
    log = PredictionLog(
        app.state.resources.session_factory, queue_size=100, batch_size=10, flush_interval_s=60
    )
    log.start()
    for _ in range(25):
        log.record(PredictionEvent(1, "iris", "1.0.0", 1, 0.5, "ok", inputs=[[1.0, 2.0, 3.0, 4.0]]))
    await log.close()
    assert log.written == 25
    assert log.failed == 0
    async with app.state.resources.session_factory() as session:
        rows = (await session.scalars(select(PredictionRecord))).all()
    assert [r.inputs for r in rows[:1]] == [[[1.0, 2.0, 3.0, 4.0]]]
