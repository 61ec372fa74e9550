"""The prediction log writer: batched writes off the request path, a bounded queue that drops
(and counts) rather than slowing predictions, and nothing queued lost at shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ORMExecuteState

from app.db.database import Database
from app.http.state import state_of
from app.models import PredictionRecord
from app.services.prediction_log import PredictionEvent, PredictionLog
from tests.conftest import MakeUser


def _dropped_total() -> float:
    return REGISTRY.get_sample_value("prediction_log_dropped_total") or 0.0


class _CountingDatabase(Database):
    """The app's database, recording the rows of every INSERT its sessions run: one entry per
    write the log makes, so the test sees how the records were batched, not only their total."""

    def __init__(self, app: FastAPI, batches: list[int]) -> None:
        super().__init__(state_of(app).resources.db.engine)
        self.batches = batches

    @asynccontextmanager
    async def session(self, *, read_only: bool = False) -> AsyncIterator[AsyncSession]:
        async with super().session(read_only=read_only) as session:

            @event.listens_for(session.sync_session, "do_orm_execute")
            def _insert(state: ORMExecuteState) -> None:
                if state.is_insert:
                    params: Any = state.parameters
                    self.batches.append(len(params) if isinstance(params, list) else 1)

            yield session


async def _count(app: FastAPI) -> int:
    async with state_of(app).resources.db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(PredictionRecord)) or 0)


async def test_a_full_queue_drops_and_counts_and_close_writes_the_rest(
    app: FastAPI, make_user: MakeUser
) -> None:
    await make_user("log-writer@example.com")  # user 1: the records' foreign key
    batches: list[int] = []
    log = PredictionLog(_CountingDatabase(app, batches), queue_size=3, batch_size=2, flush_interval_s=60)
    before = _dropped_total()
    for _ in range(5):  # the writer is not running: the queue fills after three
        log.record(PredictionEvent(1, "iris", "1.0.0", 1, 0.5, "ok"))
    assert log.dropped == 2
    assert _dropped_total() - before == 2
    log.start()
    await log.close()  # the three queued records are written, in batches of two, before it stops
    assert log.written == 3
    assert batches == [2, 1]
    assert await _count(app) == 3


async def test_records_are_written_in_batches(app: FastAPI, make_user: MakeUser) -> None:
    await make_user("log-batches@example.com")
    batches: list[int] = []
    log = PredictionLog(_CountingDatabase(app, batches), queue_size=100, batch_size=10, flush_interval_s=60)
    log.start()
    for _ in range(25):  # queued before the writer first runs: it takes them ten at a time
        log.record(PredictionEvent(1, "iris", "1.0.0", 1, 0.5, "ok", inputs=[[1.0, 2.0, 3.0, 4.0]]))
    await log.close()
    assert log.written == 25
    assert log.failed == 0
    assert batches == [10, 10, 5]  # three multi-row INSERTs, not 25 single ones
    async with state_of(app).resources.db.session() as session:
        rows = (await session.scalars(select(PredictionRecord))).all()
    assert [r.inputs for r in rows[:1]] == [[[1.0, 2.0, 3.0, 4.0]]]
