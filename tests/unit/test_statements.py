"""The statement runner of the hot paths (app.db.statements.autocommit / transaction): on PostgreSQL it
runs the repositories' Core statements on asyncpg directly, so it must give exactly what SQLAlchemy
gives, and treat a connection that dies under a statement as an outage (503), never a 500."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from sqlalchemy import Table, bindparam, event, insert, select, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.core.security import AccessClaims, Principal
from app.db import statements as db_module
from app.db.engine import create_engine
from app.db.statements import Statements, autocommit, transaction
from app.http.problems import is_database_outage
from app.models import AuthSession, Item, User
from app.models.base import utcnow
from app.repositories.items import _AS_CALLER, ItemRepository
from app.repositories.users import Access
from tests.conftest import empty_tables


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings)
    try:
        yield engine
    finally:
        await empty_tables(engine)
        await engine.dispose()


@asynccontextmanager
async def _pool_of(settings: Settings, **pool: float) -> AsyncIterator[AsyncEngine]:
    """An engine whose pool has these settings (`db_pool_size=2`, ...), disposed afterwards."""
    engine = create_engine(settings.model_copy(update=pool))
    try:
        yield engine
    finally:
        await engine.dispose()


async def _owner(engine: AsyncEngine) -> tuple[int, Access]:
    """A user with a live login session, and the access its token would carry."""
    async with engine.begin() as conn:
        result = await conn.execute(
            insert(User).values(email="owner@example.com", hashed_password="x").returning(User.id)
        )
        owner = int(result.scalar_one())
        session = "s" * 32
        await conn.execute(
            insert(AuthSession).values(id=session, user_id=owner, expires_at=utcnow() + timedelta(hours=1))
        )
    claims = AccessClaims(owner, session, "j" * 32, int(time.time()) + 3600)
    return owner, Access(Principal(claims))


async def test_autocommit_and_transaction_return_the_same_rows(engine: AsyncEngine) -> None:
    """On PostgreSQL `autocommit` is asyncpg direct and `transaction` is SQLAlchemy: every
    operation gives equal dicts both ways, timestamps timezone-aware in UTC."""
    owner, access = await _owner(engine)
    async with autocommit(engine) as db:
        created = await ItemRepository(db).add_as(access, {"title": "a", "description": None})
    async with autocommit(engine) as db:
        fast = await ItemRepository(db).get(created["id"], owner)
        fast_as = await ItemRepository(db).get_as(access, created["id"])
        fast_page, fast_total = await ItemRepository(db).page_as(access, 0, 10)
        fast_after = await ItemRepository(db).after(owner, 0, 10)
    async with transaction(engine) as db:
        slow = await ItemRepository(db).get(created["id"], owner)
        slow_as = await ItemRepository(db).get_as(access, created["id"])
        slow_page, slow_total = await ItemRepository(db).page_as(access, 0, 10)
        slow_after = await ItemRepository(db).after(owner, 0, 10)
    assert fast == slow == fast_as == slow_as == created
    assert fast_page == slow_page == fast_after == slow_after == [created]
    assert fast_total == slow_total == 1
    assert set(created) == {"id", "owner_id", "title", "description", "created_at", "updated_at"}
    assert created["created_at"].utcoffset().total_seconds() == 0
    assert created["created_at"] == created["updated_at"]
    assert abs((datetime.now(UTC) - created["created_at"]).total_seconds()) < 60


async def test_writes_report_what_they_changed(engine: AsyncEngine) -> None:
    owner, access = await _owner(engine)
    async with autocommit(engine) as db:
        items = ItemRepository(db)
        item = await items.add_as(access, {"title": "a", "description": "d"})
        updated = await items.update(item["id"], owner, {"title": "b"})
        assert updated is not None
        assert (updated["title"], updated["description"]) == ("b", "d")
        assert updated["updated_at"] >= item["updated_at"]
        assert await items.update(item["id"], owner + 1, {"title": "c"}) is None  # not the owner's
        assert await items.delete(item["id"], owner + 1) is False
        assert await items.delete(item["id"], owner) is True
        assert await items.delete(item["id"], owner) is False
        assert await items.get(item["id"], None) is None


async def test_a_parameter_left_out_is_refused(engine: AsyncEngine) -> None:
    """Through asyncpg nothing would fill in a missing parameter: the statement is refused before
    it is sent, not run with a NULL. (SQLite's path is SQLAlchemy's, with its own refusal.)"""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs statements through SQLAlchemy, which refuses in its own way")
    _, access = await _owner(engine)
    params = {**access.params, "b_description": None}
    async with autocommit(engine) as db:
        with pytest.raises(ValueError, match="b_title"):
            await db.one(_AS_CALLER[False].add, params)


_items = cast(Table, Item.__table__)
_TIMES = (_items.c.id, _items.c.title, _items.c.created_at, _items.c.updated_at)


@pytest.mark.parametrize("path", [autocommit, transaction])
async def test_column_defaults_are_the_tables_on_every_path(
    engine: AsyncEngine, path: Callable[[AsyncEngine], AbstractAsyncContextManager[Statements]]
) -> None:
    """A Core insert or update that leaves the timestamps to the columns' `default`/`onupdate` works
    on the asyncpg path as through SQLAlchemy: one timestamp for a new row, a later one on change.
    Before, the asyncpg path refused such a statement (ValueError: parameters not given) and every
    repository passed its timestamps by hand."""
    owner, _ = await _owner(engine)
    before = utcnow()
    async with path(engine) as db:
        made = await db.one(insert(_items).returning(*_TIMES), {"owner_id": owner, "title": "a"})
    assert made is not None
    assert made["created_at"] == made["updated_at"]
    assert made["created_at"].utcoffset() == timedelta(0)
    assert before <= made["created_at"] <= utcnow()
    async with path(engine) as db:
        changed = await db.one(
            update(_items).where(_items.c.id == bindparam("b_id")).returning(*_TIMES),
            {"title": "b", "b_id": made["id"]},
        )
    assert changed is not None
    assert changed["title"] == "b"
    assert changed["created_at"] == made["created_at"]
    assert changed["updated_at"] > made["updated_at"]


@pytest.mark.parametrize("path", [autocommit, transaction])
async def test_values_compiled_into_a_statement_are_sent(
    engine: AsyncEngine, path: Callable[[AsyncEngine], AbstractAsyncContextManager[Statements]]
) -> None:
    """`.limit(1)` compiles to a parameter with its value: the asyncpg path sends it (it refused
    the statement before, as a parameter not given)."""
    _, access = await _owner(engine)
    async with autocommit(engine) as db:
        for title in ("a", "b"):
            await ItemRepository(db).add_as(access, {"title": title, "description": None})
    async with path(engine) as db:
        rows = await db.all(select(_items.c.title).order_by(_items.c.id).limit(1), {})
    assert rows == [{"title": "a"}]


async def test_an_in_list_is_refused_on_the_asyncpg_path_with_the_way_to_run_it(engine: AsyncEngine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs statements through SQLAlchemy, which expands IN lists itself")
    statement = select(_items.c.id).where(_items.c.id.in_(bindparam("b_ids", expanding=True)))
    async with autocommit(engine) as db:
        with pytest.raises(ValueError, match="transaction"):
            await db.all(statement, {"b_ids": [1, 2]})
    async with transaction(engine) as db:
        assert await db.all(statement, {"b_ids": [1, 2]}) == []


async def test_a_connection_killed_under_a_statement_is_an_outage_and_is_not_reused(
    engine: AsyncEngine,
) -> None:
    """The server ends the backend (a restart, a failover, an idle timeout) between checkout and
    query: the error is an outage (answered 503), the connection is discarded, and the next
    statement gets a working one. It was a 500 before this test."""
    if engine.dialect.name != "postgresql":
        pytest.skip("a SQLite connection cannot be killed from outside")
    async with autocommit(engine) as db:  # warm one pooled connection
        pid = (await db.one(text("SELECT pg_backend_pid() AS pid"), {}) or {})["pid"]

    async def query_after_the_backend_is_killed() -> None:
        async with autocommit(engine) as db:
            async with engine.connect() as admin:
                # With a timeout it waits until the backend is gone, not only signalled.
                await admin.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
            await db.one(text("SELECT 1 AS one"), {})

    with pytest.raises(sa_exc.OperationalError) as caught:
        await query_after_the_backend_is_killed()
    assert caught.value.connection_invalidated
    assert is_database_outage(caught.value)
    async with autocommit(engine) as db:
        row = await db.one(text("SELECT pg_backend_pid() AS pid"), {})
    assert row is not None
    assert row["pid"] != pid


async def test_the_hot_paths_wait_their_turn_for_one_of_the_pool_connections(settings: Settings) -> None:
    """At most DB_POOL_SIZE hot statements hold a connection at once, never an overflow one, and
    turns are given in the order they were asked for (SQLAlchemy's own wait let newcomers
    overtake waiters: a p99 4-5x the median at 64 connections)."""
    async with _pool_of(settings, db_pool_size=2, db_max_overflow=5) as engine:
        holding, most, turns = 0, 0, []

        async def use(n: int) -> None:
            nonlocal holding, most
            async with autocommit(engine) as db:
                holding += 1
                most = max(most, holding)
                await db.one(text("SELECT 1 AS one"), {})
                await asyncio.sleep(0.02)
                holding -= 1

        async def turn(n: int) -> None:
            async with autocommit(engine):
                turns.append(n)
                await asyncio.sleep(0.01)

        for work in (use, turn):
            tasks = []
            for n in range(8):
                tasks.append(asyncio.create_task(work(n)))
                await asyncio.sleep(0)  # they ask in this order
            await asyncio.gather(*tasks)
        assert most == 2
        assert engine.sync_engine.pool.overflow() <= 0  # type: ignore[attr-defined]
        assert turns == list(range(8))


async def test_no_turn_within_the_pool_timeout_is_a_503(settings: Settings) -> None:
    async with _pool_of(settings, db_pool_size=1, db_pool_timeout=0.1) as engine:
        async with autocommit(engine):
            with pytest.raises(sa_exc.TimeoutError) as caught:
                async with autocommit(engine):
                    pass
        assert is_database_outage(caught.value)  # answered 503 with Retry-After
        async with autocommit(engine) as db:  # and the turn was given back
            assert await db.one(text("SELECT 1 AS one"), {}) == {"one": 1}


def _count_checkouts(engine: AsyncEngine) -> list[int]:
    checkouts = [0]

    @event.listens_for(engine.sync_engine, "checkout")
    def _checked_out(*_: object) -> None:
        checkouts[0] += 1

    return checkouts


async def _burst(engine: AsyncEngine, requests: int) -> list[int]:
    """`requests` hot statements at once; the backend pid each ran on."""

    async def one() -> int:
        async with autocommit(engine) as db:
            row = await db.one(text("SELECT pg_backend_pid() AS pid"), {})
            await asyncio.sleep(0.005)
            return int((row or {})["pid"])

    return list(await asyncio.gather(*(one() for _ in range(requests))))


async def test_a_connection_goes_from_one_waiting_statement_to_the_next_and_then_back(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under contention a finished hot statement hands its connection to the first waiter, with
    no return to the pool and no checkout; once nobody waits every connection is back in the pool,
    and a connection is handed on only for HAND_ON_S after it left the pool."""
    if settings.database_url.startswith("sqlite"):
        pytest.skip("SQLite's hot paths use SQLAlchemy connections, which are not handed on")
    async with _pool_of(settings, db_pool_size=2, db_max_overflow=0) as engine:
        checkouts = _count_checkouts(engine)
        pids = await _burst(engine, 20)
        assert len(set(pids)) == 2
        assert checkouts[0] == 2  # one per pool connection, not one per statement
        assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]

        monkeypatch.setattr(db_module, "HAND_ON_S", 0.0)
        checkouts[0] = 0
        await _burst(engine, 20)
        assert checkouts[0] == 20  # each went back to the pool at once
        assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_connection_closed_while_handed_on_is_replaced(settings: Settings) -> None:
    """The pool's checkout check applies to a handed-on connection too: one the server closed is
    discarded and the waiter gets a working connection, not an error."""
    if settings.database_url.startswith("sqlite"):
        pytest.skip("SQLite's hot paths use SQLAlchemy connections, which are not handed on")
    async with _pool_of(settings, db_pool_size=1, db_max_overflow=0) as engine:
        holding = asyncio.Event()

        async def first() -> int:
            async with autocommit(engine) as db:
                row = await db.one(text("SELECT pg_backend_pid() AS pid"), {})
                holding.set()
                await asyncio.sleep(0.05)  # the second one is waiting by now
                db.driver.terminate()  # type: ignore[attr-defined]  # as a server restart would
                return int((row or {})["pid"])

        async def second() -> int:
            await holding.wait()
            async with autocommit(engine) as db:
                row = await db.one(text("SELECT pg_backend_pid() AS pid"), {})
                return int((row or {})["pid"])

        before, after = await asyncio.gather(first(), second())
        assert before != after
        assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_waiter_that_gives_up_loses_no_turn(settings: Settings) -> None:
    """A request cancelled while it waits for a turn (its client went away) takes no turn and no
    connection with it: afterwards every turn can be taken again."""
    async with _pool_of(settings, db_pool_size=2, db_max_overflow=0) as engine:
        release = asyncio.Event()

        async def hold() -> None:
            async with autocommit(engine) as db:
                await db.one(text("SELECT 1 AS one"), {})
                await release.wait()

        holders = [asyncio.create_task(hold()) for _ in range(2)]
        await asyncio.sleep(0.05)
        waiters = [asyncio.create_task(hold()) for _ in range(3)]
        await asyncio.sleep(0.05)
        for waiter in waiters:
            waiter.cancel()
        release.set()
        await asyncio.gather(*holders)
        assert all(w.cancelled() for w in waiters)
        release.clear()
        again = [asyncio.create_task(hold()) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in again)  # both got a turn and hold it
        release.set()
        await asyncio.wait_for(asyncio.gather(*again), 5)
        assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_waiter_cancelled_just_before_the_turn_passes_it_over_ends_cleanly() -> None:
    """A request cancelled in the queue (its client went away) and, before it runs again, the
    request ahead finishes and passes the turn over it: it ends as cancelled, not with an error,
    and the turn is still there. Before this test it ended with a ValueError from the queue."""
    turnstile = db_module._Turnstile(1, 5.0)
    assert await turnstile.enter() is None  # the one turn, taken

    waiting = asyncio.create_task(turnstile.enter())
    await asyncio.sleep(0.01)
    waiting.cancel()
    assert turnstile.leave(None) is None  # the request ahead finishes: nobody left to hand it to
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await asyncio.wait_for(turnstile.enter(), 1) is None  # the turn is free again
