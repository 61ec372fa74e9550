"""Declarative base with constraint naming conventions, so migrations name things stably."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import DateTime, MetaData, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores none, so it is restored here)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        """None on PostgreSQL: its drivers return a TIMESTAMP WITH TIME ZONE as an aware datetime
        already, so the check above would only cost a call per value read."""
        if dialect.name == "postgresql":
            return None
        return super().result_processor(dialect, coltype)


# The table options of every table with an integer id: an id once issued is never issued again, on
# either database. PostgreSQL's sequences never hand one out twice; SQLite's plain INTEGER PRIMARY KEY
# reuses the highest id once its row is deleted, so there the table says AUTOINCREMENT. A reused id
# let a deleted user's API key act as the next user to register (issue 21, docs/security.md).
IDS_NEVER_REUSED: dict[str, object] = {"sqlite_autoincrement": True}


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_created(context: Any) -> datetime:
    """The default of an `updated_at` column: a new row's `created_at`, one clock reading, so a row
    never changed shows the same two times. Called by SQLAlchemy (and by the statement runner,
    app.db.statements) after `created_at`'s default, with the row's parameters so far."""
    return cast(datetime, context.get_current_parameters()["created_at"])


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
