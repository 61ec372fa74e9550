"""Queries on the fleet's desired model state: the one current row, and its history."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.statements import Statements
from app.models import ModelState, ModelStateChange
from app.models.base import utcnow

STATE_ID = 1
_state = cast(Table, ModelState.__table__)

# What every process polls (one primary-key row; no row: nothing changed since the seed).
_REVISION = select(_state.c.revision).where(_state.c.id == bindparam("b_id"))


async def current_revision(db: Statements) -> int:
    row = await db.one(_REVISION, {"b_id": STATE_ID})
    return int(row["revision"]) if row is not None else 0


class ModelStateRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def current(self) -> ModelState | None:
        return await self.session.scalar(select(ModelState).where(ModelState.id == STATE_ID))

    async def replace(
        self, read_revision: int, document: dict[str, Any], changed_by: int | None, action: str
    ) -> datetime | None:
        """Store the state as revision `read_revision + 1`, only if the stored revision is still
        `read_revision` (else None: another change came first; read again and retry). Flushed,
        not committed: the caller commits."""
        now = utcnow()
        values = {
            "revision": read_revision + 1,
            "document": document,
            "changed_by": changed_by,
            "changed_at": now,
        }
        if read_revision == 0:
            try:
                async with self.session.begin_nested():
                    self.session.add(ModelState(id=STATE_ID, **values))
            except IntegrityError:
                return None
        else:
            result = await self.session.execute(
                update(_state)
                .where(_state.c.id == STATE_ID, _state.c.revision == read_revision)
                .values(**values)
            )
            if getattr(result, "rowcount", 0) != 1:
                return None
        self.session.add(
            ModelStateChange(revision=read_revision + 1, changed_by=changed_by, action=action, changed_at=now)
        )
        await self.session.flush()
        return now

    async def history(self, limit: int) -> Sequence[ModelStateChange]:
        rows = await self.session.scalars(
            select(ModelStateChange).order_by(ModelStateChange.revision.desc()).limit(limit)
        )
        return rows.all()
