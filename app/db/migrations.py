"""Alembic from inside the service: the head revision, and upgrading the embedded database."""

from __future__ import annotations

from collections.abc import Callable

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import ROOT_DIR


def alembic_config(database_url: str | None = None) -> Config:
    config = Config(str(ROOT_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT_DIR / "migrations"))
    if database_url:
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade_to_head(engine: AsyncEngine) -> None:
    """Apply pending migrations on `engine`'s database (alembic's env.py reuses our connection)."""

    def _upgrade(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    await run_migrations(engine, _upgrade)


async def run_migrations(engine: AsyncEngine, run: Callable[[Connection], None]) -> None:
    """Run alembic's `run` on one connection of `engine` and commit. On SQLite, with foreign keys
    off while it runs: a migration that rebuilds a table (SQLite cannot alter most things in place)
    drops the old one, and with foreign keys on, dropping `users` would first delete every row that
    refers to it. The pragma only takes effect outside a transaction, so it is set before the first
    statement and set back after the commit, on this same connection (SQLite's own advice for
    altering tables: sqlite.org/lang_altertable.html). The migration checks the keys itself
    (`PRAGMA foreign_key_check`) before it commits."""
    sqlite = engine.dialect.name == "sqlite"
    async with engine.connect() as conn:
        if sqlite:
            await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        try:
            await conn.run_sync(run)
            await conn.commit()
        finally:
            if sqlite:
                await conn.rollback()
                await conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                await conn.commit()
