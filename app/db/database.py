"""How services reach the database: a `Database`, made once per process by the lifespan.

THE WAY for new code is `session()`: an `AsyncSession` that a service opens around its queries and
hands to its repositories (`app/repositories/api_keys.py`, `users.py`). ORM objects or Core
statements through `session.execute`, the table's column defaults (`created_at` ...) filled in by
SQLAlchemy, so a repository never passes a timestamp by hand. The service commits what it changes;
what it did not commit is rolled back when the block ends. `read_only=True` runs it in autocommit on
PostgreSQL: each statement sees what was committed before it started, exactly as under the READ
COMMITTED transaction it would otherwise open, without the BEGIN and ROLLBACK round trips around it.

THE FAST PATH, for the hot routes only: `statements()` (each statement its own transaction) and
`transaction()` (several statements committed together) yield a `Statements` runner
(app.db.statements) for Core statements built once at import. On PostgreSQL `statements()` runs
them on asyncpg itself, compiled once, past SQLAlchemy's execution layer: a statement costs ~65 us
of CPU against ~165 us through SQLAlchemy, GET item 900 -> 487 us (bench/analysis.md). Column
defaults work there too. Its users, each measured: the per-request token or key check
(app.services.auth, app.services.api_keys), items' read, list, create, update and delete
(app.repositories.items), the model-state poll (app.services.model_fleet). A route joins them only
with a `python -m bench.profile_hot` figure that shows the session costs too much.

A block holds a connection only while it is open, so a service opens it around its queries and not
around slow work (password hashing runs outside any block).

ON SQLITE, ONE WRITER AT A TIME, QUEUED HERE: SQLite lets one connection write at a time, and a
connection that finds the file locked waits in SQLite's busy handler, which sleeps 1, 2, 5, 10 ...
100 ms between tries: at 64 connections, POST item's p99 was 692 ms and its slowest 1.6 s (issue
25). So a block that may write (`session()` unless read-only, `transaction()`, `statements(write=
True)`) first takes this process's writer gate, a FIFO asyncio lock, and the busy handler only
ever waits for another process's writer. Reads never take it (WAL: they run beside the writer).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db.statements import Statements, autocommit, transaction

_AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}


class WriterGate:
    """SQLite's writer, one at a time in this process, in the order they came (see the module's
    docstring). A task that holds it and opens another writing block goes on (no deadlock with
    itself)."""

    __slots__ = ("_lock", "_owner")

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[object] | None = None

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        task = asyncio.current_task()
        if task is not None and task is self._owner:
            yield
            return
        async with self._lock:
            self._owner = task
            try:
                yield
            finally:
                self._owner = None


class Database:
    __slots__ = ("_sessions", "_writer", "engine", "is_postgresql")

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_postgresql = engine.dialect.name == "postgresql"
        self._sessions = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
        self._writer = WriterGate() if engine.dialect.name == "sqlite" else None

    def _writing(self) -> AbstractAsyncContextManager[None]:
        return nullcontext() if self._writer is None else self._writer.held()

    @asynccontextmanager
    async def session(self, *, read_only: bool = False) -> AsyncIterator[AsyncSession]:
        """The way for new code: an ORM session (see the module's docstring)."""
        if read_only:
            async with self._sessions() as session:
                if self.is_postgresql:
                    await session.connection(execution_options=_AUTOCOMMIT)
                yield session
            return
        async with self._writing(), self._sessions() as session:
            yield session

    def statements(self, *, write: bool = False) -> AbstractAsyncContextManager[Statements]:
        """The hot routes' fast path: each statement its own transaction (see the module's
        docstring); `write`: the block writes (on SQLite, it takes the writer gate first)."""
        if write and self._writer is not None:
            return self._gated(autocommit(self.engine))
        return autocommit(self.engine)

    def transaction(self) -> AbstractAsyncContextManager[Statements]:
        """The hot routes' fast path for several statements committed together."""
        if self._writer is not None:
            return self._gated(transaction(self.engine))
        return transaction(self.engine)

    @asynccontextmanager
    async def _gated(self, block: AbstractAsyncContextManager[Statements]) -> AsyncIterator[Statements]:
        async with self._writing(), block as statements:
            yield statements

    async def dispose(self) -> None:
        await self.engine.dispose()
