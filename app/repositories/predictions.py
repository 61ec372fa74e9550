"""Queries on the prediction log."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import PredictionFeedback, PredictionRecord


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

    async def by_prediction_id(self, prediction_id: uuid.UUID) -> PredictionRecord | None:
        return await self.session.scalar(
            select(PredictionRecord).where(PredictionRecord.prediction_id == prediction_id)
        )

    async def has_feedback(self, record_id: int) -> bool:
        found = await self.session.scalar(
            select(PredictionFeedback.id).where(PredictionFeedback.record_id == record_id).limit(1)
        )
        return found is not None

    async def add_feedback(self, rows: Sequence[dict[str, Any]]) -> None:
        await self.session.execute(insert(PredictionFeedback), list(rows))
