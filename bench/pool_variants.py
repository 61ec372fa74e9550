"""Bench-only ways for the hot paths to get a PostgreSQL connection, swapped in for the app's own
`autocommit` without changing the app: what bench/pool_compare.py measures side by side.

- `turnstile`: the app's own `autocommit` (FIFO turns for DB_POOL_SIZE connections, a connection
  handed straight on to the next waiter for up to HAND_ON_S), only counted;
- `asyncpg_pool`: asyncpg's own pool (`asyncpg.create_pool`, min = max = DB_POOL_SIZE,
  `acquire(timeout=DB_POOL_TIMEOUT)`, no reset query on release), running the same compiled SQL
  the same way (the app's `_OnDriver`); SQLAlchemy's pool still serves everything else;
- `sqlalchemy_pool`: SQLAlchemy's pool alone, `engine.raw_connection()` per block and `close()`
  after it, no turnstile (so with DB_MAX_OVERFLOW: overflow connections opened and closed).

`python -m bench.pool_variants VARIANT` serves the app like `python -m app.cli serve` with the
variant installed; with BENCH_POOL_STATS=PATH it writes, at exit, how many times the variant ran
and which app modules hold it (bench/pool_compare.py checks both).

The patch point is `install()`; `DB_MODULE` names where `autocommit` lives (one line to change
when the database code moves).
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import json
import os
import sys
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

DB_MODULE = "app.db.statements"  # where `autocommit`, `_OnDriver` and `_asyncpg_disconnects` live
VARIANTS = ("turnstile", "asyncpg_pool", "sqlalchemy_pool")

CALLS = [0]  # hot-path blocks run by the installed variant in this process


def install(name: str) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    """Replaces `autocommit` by the variant `name` (counted), in the database module and in every
    app module already imported that took it by name. Call it before the app is imported; at exit
    `installed_in()` says which modules ended up holding it."""
    db = importlib.import_module(DB_MODULE)
    original = db.autocommit
    impl = {
        "turnstile": lambda: original,
        "asyncpg_pool": lambda: _asyncpg_pool_variant(db, original),
        "sqlalchemy_pool": lambda: _sqlalchemy_pool_variant(db, original),
    }[name]()

    def autocommit(engine: Any) -> AbstractAsyncContextManager[Any]:
        CALLS[0] += 1
        return impl(engine)

    autocommit.variant = name  # type: ignore[attr-defined]
    db.autocommit = autocommit
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("app.") and getattr(module, "autocommit", None) is original:
            module.autocommit = autocommit  # type: ignore[attr-defined]
    return autocommit


def installed_in() -> dict[str, str]:
    """Each imported app module that has an `autocommit`, and which variant it holds."""
    return {
        name: getattr(module.autocommit, "variant", "the app's own (not patched)")
        for name, module in sorted(sys.modules.items())
        if name.startswith("app.") and hasattr(module, "autocommit")
    }


# --------------------------------------------------------------------------- b: asyncpg's pool


def _asyncpg_pool_variant(db: Any, original: Any) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    import asyncpg
    from sqlalchemy import exc as sa_exc

    pools: weakref.WeakKeyDictionary[Any, asyncio.Task[Any]] = weakref.WeakKeyDictionary()

    async def _no_reset(_conn: Any) -> None:
        """Nothing on release: the hot paths leave no session state (autocommit statements only);
        asyncpg still rolls back an open transaction itself before calling this."""

    async def create(engine: Any) -> Any:
        from sqlalchemy import event

        from app.core.config import Settings

        settings = Settings()  # the server's own, from the same environment
        server_settings = {"application_name": settings.app_name}
        if settings.db_statement_timeout_ms:
            server_settings["statement_timeout"] = str(settings.db_statement_timeout_ms)
        size = engine.sync_engine.pool.size()
        pool = await asyncpg.create_pool(
            engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
            min_size=size,
            max_size=size,
            reset=_no_reset,
            timeout=settings.db_pool_timeout,
            server_settings=server_settings,
        )
        # Closed with the engine (the lifespan disposes it at shutdown).
        event.listen(engine.sync_engine, "engine_disposed", lambda *_: pool.terminate())
        return pool

    async def pool_of(engine: Any) -> Any:
        task = pools.get(engine)
        if task is None:
            task = pools[engine] = asyncio.ensure_future(create(engine))
        try:
            return await asyncio.shield(task)
        except BaseException:
            if task.done() and (task.cancelled() or task.exception() is not None):
                pools.pop(engine, None)
            raise

    @asynccontextmanager
    async def autocommit(engine: Any) -> AsyncIterator[Any]:
        if engine.dialect.name != "postgresql":  # SQLite: the app's own
            async with original(engine) as statements:
                yield statements
            return
        pool = await pool_of(engine)
        try:
            conn = await pool.acquire(timeout=engine.sync_engine.pool.timeout())
        except TimeoutError:
            raise sa_exc.TimeoutError("no database connection became free within the timeout") from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise sa_exc.OperationalError(None, None, error) from error
        try:
            yield db._OnDriver(conn, engine.dialect)
        except (OSError, *db._asyncpg_disconnects()) as error:
            raise sa_exc.OperationalError(None, None, error, connection_invalidated=True) from error
        finally:
            await pool.release(conn)  # asyncpg terminates a connection left mid-statement

    return autocommit


# --------------------------------------------------------------------------- c: SQLAlchemy's pool


def _sqlalchemy_pool_variant(db: Any, original: Any) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.util.concurrency import greenlet_spawn

    @asynccontextmanager
    async def autocommit(engine: Any) -> AsyncIterator[Any]:
        if engine.dialect.name != "postgresql":  # SQLite: the app's own
            async with original(engine) as statements:
                yield statements
            return
        try:
            fairy = await engine.raw_connection()  # the pool's wait, checkout check and overflow
        except engine.dialect.loaded_dbapi.Error as error:
            raise sa_exc.OperationalError(None, None, error) from error
        try:
            yield db._OnDriver(fairy.driver_connection, engine.dialect)
        except BaseException as error:
            if isinstance(error, (asyncio.CancelledError, OSError, *db._asyncpg_disconnects())):
                fairy.invalidate(error if isinstance(error, Exception) else None)
                if not isinstance(error, asyncio.CancelledError):
                    raise sa_exc.OperationalError(None, None, error, connection_invalidated=True) from error
            raise
        finally:
            await greenlet_spawn(fairy.close)  # back to the pool

    return autocommit


# --------------------------------------------------------------------------- the server


def _write_stats(path: Path, variant: str) -> None:
    path.write_text(json.dumps({"variant": variant, "calls": CALLS[0], "installed_in": installed_in()}))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in VARIANTS:
        print(f"usage: python -m bench.pool_variants {{{','.join(VARIANTS)}}}", file=sys.stderr)
        return 2
    install(args[0])
    stats = os.environ.get("BENCH_POOL_STATS")
    if stats:
        atexit.register(_write_stats, Path(stats), args[0])
    from app.cli import main as cli_main

    return cli_main(["serve"])


if __name__ == "__main__":
    sys.exit(main())
