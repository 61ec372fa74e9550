"""Garbage collection while serving: start-up's objects frozen, a larger young generation; both
undone at shutdown (docs/performance.md has what it changed: the p99 of GET item at 64
connections went from 4.4x its median to 1.2x)."""

from __future__ import annotations

import gc

from app.core.config import Settings
from app.http.state import state_of
from app.main import create_app
from tests.conftest import empty_tables
from tests.lifespan import lifespan


async def test_the_heap_is_frozen_while_serving_and_released_at_shutdown(settings: Settings) -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    settings = settings.model_copy(update={"gc_freeze": True})  # the suite's settings turn it off
    application = create_app(settings)
    async with lifespan(application):
        # The app's routes, schemas and SQLAlchemy structures: tens of thousands of objects that
        # full collections no longer walk.
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold() == (settings.gc_gen0_threshold, *before[1:])
        await empty_tables(state_of(application).resources.db.engine)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


async def test_both_can_be_switched_off(settings: Settings) -> None:
    before = gc.get_threshold()
    application = create_app(settings.model_copy(update={"gc_freeze": False, "gc_gen0_threshold": 0}))
    async with lifespan(application):
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == before
