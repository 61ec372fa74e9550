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
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db.statements import Statements, autocommit, transaction

_AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}


class Database:
    __slots__ = ("_sessions", "engine", "is_postgresql")

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_postgresql = engine.dialect.name == "postgresql"
        self._sessions = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)

    @asynccontextmanager
    async def session(self, *, read_only: bool = False) -> AsyncIterator[AsyncSession]:
        """The way for new code: an ORM session (see the module's docstring)."""
        async with self._sessions() as session:
            if read_only and self.is_postgresql:
                await session.connection(execution_options=_AUTOCOMMIT)
            yield session

    def statements(self) -> AbstractAsyncContextManager[Statements]:
        """The hot routes' fast path: each statement its own transaction (see the module's docstring)."""
        return autocommit(self.engine)

    def transaction(self) -> AbstractAsyncContextManager[Statements]:
        """The hot routes' fast path for several statements committed together."""
        return transaction(self.engine)

    async def dispose(self) -> None:
        await self.engine.dispose()
