"""The one way services reach the database: a `Database`, made once per process by the lifespan.

Services receive it and open what their work needs, for as long as it needs it:

- `statements()`: a pooled connection on which each statement is its own transaction. For work
  that is one statement at a time: the access-token check, item reads, an item insert or delete.
  On PostgreSQL the statements run on asyncpg directly, compiled once (app.db.statements).
- `transaction()`: several statements, committed together at the end of the block.
- `session()`: an ORM session, for the account work whose unit spans several objects (registration,
  log-in and refresh-token rotation, user administration, the prediction history and its writer).
  The service commits what it changes; what it did not commit is rolled back when the block ends.
  `read_only=True` runs it in autocommit on PostgreSQL: each statement sees what was committed
  before it started, exactly as under the READ COMMITTED transaction it would otherwise open,
  without the BEGIN and ROLLBACK round trips around it (docs/performance.md).

The ORM stays where identity maps and relationships earn their cost (accounts); the hot paths pay
for neither (bench/analysis.md). Repositories take what these blocks yield: `Statements` or an
`AsyncSession`. A block holds a connection only while it is open, so a service opens it around its
queries and not around slow work (password hashing runs outside any block).
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

    def statements(self) -> AbstractAsyncContextManager[Statements]:
        return autocommit(self.engine)

    def transaction(self) -> AbstractAsyncContextManager[Statements]:
        return transaction(self.engine)

    @asynccontextmanager
    async def session(self, *, read_only: bool = False) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            if read_only and self.is_postgresql:
                await session.connection(execution_options=_AUTOCOMMIT)
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()
