"""Queries on the prediction log."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import PredictionRecord


class PredictionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_many(self, rows: Sequence[dict[str, Any]]) -> None:
        """One multi-row INSERT for a whole batch of records."""
        await self.session.execute(insert(PredictionRecord), list(rows))

    async def before(
        self, user_id: int | None, before_id: int | None, limit: int
    ) -> Sequence[PredictionRecord]:
        """Newest first: records with an id below `before_id` (`user_id=None`: every user's)."""
        query = select(PredictionRecord)
        if user_id is not None:
            query = query.where(PredictionRecord.user_id == user_id)
        if before_id is not None:
            query = query.where(PredictionRecord.id < before_id)
        rows = await self.session.scalars(query.order_by(PredictionRecord.id.desc()).limit(limit))
        return rows.all()
