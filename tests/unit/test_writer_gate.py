"""SQLite's writer gate (app.db.database): writing blocks of one process take turns in the order
they came, a task already holding it goes on, and reads never wait for it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.db.database import Database, WriterGate


async def test_writers_take_turns_in_order_and_a_holder_goes_on() -> None:
    gate = WriterGate()
    order: list[str] = []

    async def writer(name: str, hold: float) -> None:
        async with gate.held():
            order.append(f"{name} in")
            async with gate.held():  # the same task again: no deadlock with itself
                await asyncio.sleep(hold)
            order.append(f"{name} out")

    await asyncio.gather(writer("a", 0.05), writer("b", 0.0), writer("c", 0.0))
    assert order == ["a in", "a out", "b in", "b out", "c in", "c out"]


async def test_on_sqlite_a_write_waits_for_the_writer_and_a_read_does_not(tmp_path: Path) -> None:
    # No busy timeout: a second connection that tried to write while the first holds SQLite's lock
    # would fail at once ("database is locked"); queued at the gate, it waits its turn instead.
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'gate.db'}", connect_args={"timeout": 0})
    db = Database(engine)
    try:
        async with db.session() as session:
            await session.execute(text("CREATE TABLE t (x INTEGER)"))
            await session.commit()
        holding = asyncio.Event()
        release = asyncio.Event()

        async def long_write() -> None:
            async with db.session() as session:
                await session.execute(text("INSERT INTO t VALUES (1)"))
                holding.set()
                await release.wait()
                await session.commit()

        first = asyncio.create_task(long_write())
        await holding.wait()
        async with db.session(read_only=True) as session:  # beside the writer (WAL or not)
            assert (await session.execute(text("SELECT count(*) FROM t"))).scalar() == 0
        second = asyncio.create_task(_write(db, 2))
        await asyncio.sleep(0.1)
        assert not second.done()  # queued behind the first at the gate
        release.set()
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        async with db.session(read_only=True) as session:
            assert (await session.execute(text("SELECT count(*) FROM t"))).scalar() == 2
    finally:
        await engine.dispose()


async def _write(db: Database, value: int) -> None:
    async with db.transaction() as statements:
        await statements.rowcount(text("INSERT INTO t VALUES (:x)"), {"x": value})
