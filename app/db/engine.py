"""The engine and the ORM session factory, for SQLite (aiosqlite) and PostgreSQL (asyncpg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from app.core.config import Settings


def create_engine(settings: Settings, url: str | None = None) -> AsyncEngine:
    """An engine configured for its backend: pool limits for PostgreSQL, pragmas for SQLite."""
    url = url or settings.database_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(settings, url)
    connect_args: dict[str, Any] = {
        # One server round trip saved per transaction; the app never relies on prepared statements
        # across pgbouncer-style poolers, and asyncpg's statement cache stays on.
        "server_settings": {"application_name": settings.app_name},
        "timeout": settings.db_pool_timeout,
    }
    if settings.db_statement_timeout_ms:
        connect_args["server_settings"]["statement_timeout"] = str(settings.db_statement_timeout_ms)
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=settings.db_pool_recycle,
        connect_args=connect_args,
        echo=settings.db_echo,
    )
    if settings.db_pool_pre_ping:
        _check_on_checkout(engine)
    return engine


def _check_on_checkout(engine: AsyncEngine) -> None:
    """The pre-ping, without the round trips: a pooled connection the server or the network closed
    is replaced before a request gets it.

    SQLAlchemy's own `pool_pre_ping` costs three round trips per checkout on asyncpg (BEGIN, `;`,
    ROLLBACK): more than the queries of a typical request (docs/performance.md). asyncpg notices a
    closed socket by itself (a restarted server, a killed backend, an idle timeout all close it),
    so asking it is enough here; a connection that dies silently fails its first query instead,
    which SQLAlchemy reports as a disconnect (a 503 for that request) and answers by invalidating
    the whole pool, so the service recovers by itself either way.
    """

    @event.listens_for(engine.sync_engine, "checkout")
    def _closed_is_invalid(dbapi_connection: Any, _record: ConnectionPoolEntry, _proxy: Any) -> None:
        if dbapi_connection.driver_connection.is_closed():
            # The pool discards this connection and checks out (or opens) another one.
            raise sa_exc.DisconnectionError("connection closed by the server")


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for PostgreSQL and for an in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _sqlite_engine(settings: Settings, url: str) -> AsyncEngine:
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Pooled: each aiosqlite connection owns a thread, too costly to open per request. WAL
        # lets readers run beside the one writer; writers wait for each other up to the busy timeout.
        pool: dict[str, Any] = {
            "pool_size": settings.db_pool_size,
            "max_overflow": settings.db_max_overflow,
            "pool_timeout": settings.db_pool_timeout,
        }
    else:
        # In memory: one database per connection, so one connection shared (SQLAlchemy's
        # StaticPool takes no pool sizes).
        pool = {"poolclass": StaticPool}
    engine = create_async_engine(
        url,
        **pool,
        connect_args={"timeout": settings.sqlite_busy_timeout_ms / 1000},
        echo=settings.db_echo,
    )
    busy_ms = settings.sqlite_busy_timeout_ms

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        # FULL: a commit that was answered survives a power loss, not only a process crash.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    return engine
