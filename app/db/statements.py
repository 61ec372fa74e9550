"""The statement runner: the hot routes' measured fast path, not the way for new code (that is
`Database.session()`, app.db.database). Prebuilt Core statements on one pooled connection, plain
rows back, column defaults computed as SQLAlchemy computes them; on PostgreSQL run by asyncpg
itself, with connections handed on in turn (`_Turnstile`). Figures: bench/analysis.md."""

from __future__ import annotations

import asyncio
import time
import weakref
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, cast

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
)
from sqlalchemy.schema import ColumnDefault
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util.concurrency import greenlet_spawn

Row = dict[str, Any]

# `greenlet_spawn` is not public API, and none serves instead: returning a connection checked out
# with the public `AsyncEngine.raw_connection()` runs the pool's sync code (reset, return, events),
# which awaits the driver through SQLAlchemy's greenlet bridge; `greenlet_spawn` is that bridge
# (`AsyncEngine.raw_connection` itself calls it). tests/unit/test_sqlalchemy_contract.py fails when it moves.
# The other SQLAlchemy parts used here are public: `PoolProxiedConnection.driver_connection`
# (since 1.4.24), `invalidate()`, `is_valid`, `close()`, and the compiler's interfaces in `_Compiled`.


class Statements(ABC):
    """Runs the prebuilt Core statements of the repositories on one pooled connection and returns
    plain dicts (column name -> value), on every backend: what the hot paths need, nothing more."""

    @abstractmethod
    async def one(self, statement: Executable, params: Mapping[str, Any]) -> Row | None: ...

    @abstractmethod
    async def all(self, statement: Executable, params: Mapping[str, Any]) -> list[Row]: ...

    @abstractmethod
    async def rowcount(self, statement: Executable, params: Mapping[str, Any]) -> int: ...


class _OnConnection(Statements):
    """Through SQLAlchemy's connection: SQLite, and transactions on any backend."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def one(self, statement: Executable, params: Mapping[str, Any]) -> Row | None:
        row = (await self.conn.execute(statement, params)).mappings().first()
        return None if row is None else dict(row)

    async def all(self, statement: Executable, params: Mapping[str, Any]) -> list[Row]:
        return [dict(row) for row in (await self.conn.execute(statement, params)).mappings()]

    async def rowcount(self, statement: Executable, params: Mapping[str, Any]) -> int:
        result = await self.conn.execute(statement, params)
        return int(result.rowcount)


class _Defaults:
    """What a Python-side column default is called with: SQLAlchemy's execution context offers
    `get_current_parameters()` to context-sensitive defaults, and so does this."""

    __slots__ = ("current_parameters",)

    def __init__(self, current_parameters: dict[str, Any]) -> None:
        self.current_parameters = current_parameters

    def get_current_parameters(self, isolate_multiinsert_groups: bool = True) -> dict[str, Any]:  # noqa: ARG002
        return self.current_parameters


class _Compiled:
    """A statement compiled once for asyncpg: its SQL, its parameter names in `$n` order with each
    one's bind processor (UTCDateTime's checks run as they would through SQLAlchemy), the column
    defaults SQLAlchemy would compute at execution, and the result processor of each returned column.

    Public SQLAlchemy only: `SQLCompiler.construct_expanded_state` gives the final SQL, the
    positional order and the values compiled in; `binds` each parameter's type (and so its bind
    processor, `TypeEngine.bind_processor`); `insert_prefetch` and
    `update_prefetch` (documented SQLCompiler attributes) name the columns whose Python-side
    `default`/`onupdate` SQLAlchemy would call before the statement, each bound under its column key.
    tests/unit/test_sqlalchemy_contract.py fails on the SQLAlchemy release that changes any of it."""

    __slots__ = ("defaults", "fixed", "names", "params", "results", "sql")

    def __init__(self, statement: Executable, dialect: Dialect, params: Mapping[str, Any]) -> None:
        compiled = cast(
            SQLCompiler, cast(ClauseElement, statement).compile(dialect=dialect, column_keys=list(params))
        )
        generators = [(column, column.default) for column in compiled.insert_prefetch]
        generators += [(column, column.onupdate) for column in compiled.update_prefetch]
        self.defaults = tuple(
            (column.key, _call(generator)) for column, generator in generators if column.key not in params
        )
        given = {**params, **dict.fromkeys(name for name, _ in self.defaults)}
        try:
            state = compiled.construct_expanded_state(given)
        except sa_exc.InvalidRequestError as error:  # a required parameter left out
            raise ValueError(f"statement needs parameters not given: {error}") from None
        if state.parameter_expansion:
            raise ValueError("expanding parameters (IN lists) are not run here: use transaction()")
        self.sql = state.statement
        self.names = tuple(state.positiontup or ())
        # Values compiled into the statement (`.limit(20)`, `literal(...)`), the same at every run.
        self.fixed = {name: state.parameters[name] for name in self.names if name not in given}
        self.params = tuple(
            (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in self.names
        )
        columns = getattr(statement, "selected_columns", None)
        if columns is None or not len(columns):
            columns = compiled.effective_returning or ()
        processors = (
            (column.key, column.type.dialect_impl(dialect).result_processor(dialect, None))
            for column in columns
        )
        self.results = tuple((name, proc) for name, proc in processors if proc is not None)

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        if self.defaults or self.fixed:
            current = {**self.fixed, **params}
            context = _Defaults(current)
            for name, default in self.defaults:  # in column order, as SQLAlchemy calls them
                current[name] = default(context)
            params = current
        return [params[name] if proc is None else proc(params[name]) for name, proc in self.params]

    def row(self, record: Any) -> Row:
        row = dict(record)
        for name, proc in self.results:
            row[name] = proc(row[name])
        return row


def _call(generator: Any) -> Callable[[Any], Any]:
    """A prefetched column's default as a function of the context: SQLAlchemy wraps a callable
    default to take the context (`CallableColumnDefault.arg`); a constant is its `arg`."""
    if not isinstance(generator, ColumnDefault) or generator.is_clause_element:
        raise ValueError(f"a column default the statement runner cannot compute: {generator!r}")
    value = generator.arg
    return cast(Callable[[Any], Any], value) if generator.is_callable else lambda _context: value


_COMPILED: dict[tuple[Executable, tuple[str, ...]], _Compiled] = {}
_COMPILED_MAX = 1024


def _compiled(statement: Executable, dialect: Dialect, params: Mapping[str, Any]) -> _Compiled:
    key = (statement, tuple(params))
    found = _COMPILED.get(key)
    if found is None:
        if len(_COMPILED) >= _COMPILED_MAX:  # statements are module constants: never in practice
            _COMPILED.clear()
        found = _COMPILED[key] = _Compiled(statement, dialect, params)
    return found


class _OnDriver(Statements):
    """PostgreSQL: the statement compiled once, run by asyncpg itself on a connection checked out
    of SQLAlchemy's pool (the same pool, limits, checkout check and metrics as everything else).
    A statement costs about 65 us of CPU this way against about 165 us through SQLAlchemy's
    execution layer (bench/analysis.md); asyncpg's own prepared-statement cache is used.
    Outside a transaction each statement commits on its own (autocommit)."""

    def __init__(self, driver: Any, dialect: Dialect) -> None:
        self.driver = driver
        self.dialect = dialect

    async def one(self, statement: Executable, params: Mapping[str, Any]) -> Row | None:
        compiled = _compiled(statement, self.dialect, params)
        record = await self.driver.fetchrow(compiled.sql, *compiled.args(params))
        return None if record is None else compiled.row(record)

    async def all(self, statement: Executable, params: Mapping[str, Any]) -> list[Row]:
        compiled = _compiled(statement, self.dialect, params)
        return [compiled.row(r) for r in await self.driver.fetch(compiled.sql, *compiled.args(params))]

    async def rowcount(self, statement: Executable, params: Mapping[str, Any]) -> int:
        compiled = _compiled(statement, self.dialect, params)
        status: str = await self.driver.execute(compiled.sql, *compiled.args(params))
        # asyncpg returns the command tag: "DELETE 1", "UPDATE 0", "INSERT 0 1".
        return int(status.rsplit(" ", 1)[-1])


@asynccontextmanager
async def autocommit(engine: AsyncEngine) -> AsyncIterator[Statements]:
    """A pooled connection on which each statement is its own transaction, for the hot paths whose
    work is one statement at a time (the access-token check, item reads, an item insert or delete).

    On PostgreSQL the statements run in autocommit on asyncpg directly (see `_OnDriver`): a
    statement sees what was committed before it started, exactly as under the READ COMMITTED
    transaction it would otherwise open, and a write is committed when its statement returns,
    without the BEGIN and COMMIT/ROLLBACK round trips around it (docs/performance.md). SQLite's
    driver opens no transaction for a read anyway; there the block is one transaction, committed at
    its end (rolled back on an error).
    Work that needs several statements to be atomic uses `transaction(engine)` (or a session).
    """
    turnstile = _turnstile(engine)
    handed = await turnstile.enter()
    if engine.dialect.name != "postgresql":
        try:
            async with engine.begin() as conn:
                yield _OnConnection(conn)
        finally:
            turnstile.leave(None)
        return
    try:
        held = await _usable(engine, handed)
    except BaseException:
        turnstile.leave(None)
        raise
    try:
        yield _OnDriver(held.fairy.driver_connection, engine.dialect)
    except BaseException as error:
        # A connection interrupted mid-statement (cancelled, timed out, cut) is never reused.
        if isinstance(error, (asyncio.CancelledError, OSError, *_asyncpg_disconnects())):
            held.fairy.invalidate(error if isinstance(error, Exception) else None)
            if not isinstance(error, asyncio.CancelledError):
                raise sa_exc.OperationalError(None, None, error, connection_invalidated=True) from error
        raise
    finally:
        fresh = held.fairy.is_valid and time.monotonic() - held.since < HAND_ON_S
        if turnstile.leave(held if fresh else None) is not None or not fresh:
            await greenlet_spawn(held.fairy.close)  # back to the pool


# How long a connection may go from one hot request to the next before it returns to the pool.
HAND_ON_S = 1.0


class _Held:
    """A connection checked out of the pool by a hot path, and when it was."""

    __slots__ = ("fairy", "since")

    def __init__(self, fairy: Any, since: float) -> None:
        self.fairy = fairy
        self.since = since


async def _usable(engine: AsyncEngine, handed: _Held | None) -> _Held:
    """The connection handed on with the turn if it is still open (the pool's checkout check),
    otherwise one checked out of the pool."""
    if handed is not None:
        if not handed.fairy.driver_connection.is_closed():
            return handed
        handed.fairy.invalidate()
        await greenlet_spawn(handed.fairy.close)
    try:
        return _Held(await engine.raw_connection(), time.monotonic())
    except engine.dialect.loaded_dbapi.Error as error:
        # What Engine.connect() would have raised: the database cannot be reached (a 503).
        raise sa_exc.OperationalError(None, None, error) from error


class _Turnstile:
    """The hot paths' way to the pool: at most DB_POOL_SIZE of their statements hold a connection
    at once, and the others wait in arrival order, up to the pool timeout (then SQLAlchemy's own
    pool-timeout error, a 503). SQLAlchemy's wait lets a newcomer take the connection a waiter was
    woken for (a 4-5x p99 at 64 connections with a pool of 10) and opens and closes overflow
    connections under sustained load (a new backend and a SCRAM log-in each time); this wait
    costs neither.

    A hot path that finishes while others wait hands its connection on with its turn, for up to
    `HAND_ON_S` after the connection left the pool: returning it to the pool and checking it out
    again cost 70-100 µs of CPU per request in the app under load (bench/analysis.md). Then it goes
    back to the pool, so the pool's recycling, and the sessions waiting on the pool, get it at
    least that often. With nobody waiting every connection goes straight back: nothing is held
    between requests.
    """

    __slots__ = ("free", "timeout", "waiters")

    def __init__(self, size: int, timeout: float) -> None:
        self.free = size
        self.timeout = timeout
        self.waiters: deque[asyncio.Future[_Held | None]] = deque()

    async def enter(self) -> _Held | None:
        """Waits for a turn; returns the connection handed on with it, if one was."""
        if self.free and not self.waiters:
            self.free -= 1
            return None
        waiter: asyncio.Future[_Held | None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            async with asyncio.timeout(self.timeout):
                return await waiter
        except BaseException as error:
            if waiter.done() and not waiter.cancelled():
                # The turn came at the very moment of the timeout or cancellation: pass it on.
                left = self.leave(waiter.result())
                if left is not None:
                    await greenlet_spawn(left.fairy.close)
            elif waiter in self.waiters:  # not yet passed over by `leave`
                waiter.cancel()
                self.waiters.remove(waiter)
            if isinstance(error, TimeoutError):
                raise sa_exc.TimeoutError(
                    "no database connection became free within the pool timeout"
                ) from None
            raise

    def leave(self, held: _Held | None) -> _Held | None:
        """Ends a turn: gives it, and `held`, to the first waiter. Returns `held` when nobody
        waits, for the caller to return to the pool."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(held)
                return None
        self.free += 1
        return held


# Per engine: the hot paths' turnstile, sized from the pool once.
_TURNSTILES: weakref.WeakKeyDictionary[AsyncEngine, _Turnstile] = weakref.WeakKeyDictionary()
_NO_LIMIT = 1 << 20


def _turnstile(engine: AsyncEngine) -> _Turnstile:
    turnstile = _TURNSTILES.get(engine)
    if turnstile is None:
        # Pools without a size (NullPool, StaticPool) hold no connections to wait for.
        pool = engine.sync_engine.pool
        size = getattr(pool, "size", lambda: _NO_LIMIT)()
        turnstile = _TURNSTILES[engine] = _Turnstile(size, getattr(pool, "timeout", lambda: 30.0)())
    return turnstile


def _asyncpg_disconnects() -> tuple[type[BaseException], ...]:
    """asyncpg's "the connection is gone" errors (OSError and TimeoutError are checked besides)."""
    import asyncpg  # type: ignore[import-untyped]  # noqa: PLC0415 - PostgreSQL only

    return (asyncpg.PostgresConnectionError, asyncpg.InterfaceError)


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[Statements]:
    """Several statements in one transaction, committed at the end of the block (rolled back on an
    error), through SQLAlchemy on every backend."""
    async with engine.begin() as conn:
        yield _OnConnection(conn)
