"""Queries on the prediction log."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, func, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import DriftCount, PredictionFeedback, PredictionRecord, ShadowRecord

_Query = TypeVar("_Query", bound="Select[*tuple[Any, ...]]")


class PredictionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_many(self, rows: Sequence[dict[str, Any]]) -> None:
        """One multi-row INSERT for a whole batch of records."""
        await self.session.execute(insert(PredictionRecord), list(rows))

    async def shadows_of(self, prediction_id: uuid.UUID) -> Sequence[ShadowRecord]:
        rows = await self.session.scalars(
            select(ShadowRecord).where(ShadowRecord.prediction_id == prediction_id)
        )
        return rows.all()

    async def add_shadows(self, rows: Sequence[dict[str, Any]]) -> None:
        await self.session.execute(insert(ShadowRecord), list(rows))

    async def shadow_sums(
        self, model: str, *, last: int | None, since: datetime | None, until: datetime | None
    ) -> list[tuple[Any, ...]]:
        """Per (primary version, shadow version) over the model's newest `last` shadow records, or
        those made in [since, until): records, rows, rows agreed, summed |difference|."""
        window = select(
            ShadowRecord.version,
            ShadowRecord.shadow_version,
            ShadowRecord.rows,
            ShadowRecord.agreed,
            ShadowRecord.abs_difference,
        ).where(ShadowRecord.model == model)
        rows = _windowed(
            window, ShadowRecord.id, ShadowRecord.created_at, last=last, since=since, until=until
        ).subquery()
        query = (
            select(
                rows.c.version,
                rows.c.shadow_version,
                func.count(),
                func.sum(rows.c.rows),
                func.sum(rows.c.agreed),
                func.sum(rows.c.abs_difference),
            )
            .group_by(rows.c.version, rows.c.shadow_version)
            .order_by(rows.c.version, rows.c.shadow_version)
        )
        return [tuple(row) for row in (await self.session.execute(query)).all()]

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

    async def feedback_versions(self, model: str) -> list[str]:
        """The versions of `model` that have feedback: one index probe per version (a loose index
        scan as a recursive query; `SELECT DISTINCT` read every row of the model's index, 0.1 s at a
        million rows on PostgreSQL)."""
        rows = await self.session.execute(
            text(
                """
                WITH RECURSIVE seen(version) AS (
                    SELECT min(version) FROM prediction_feedback WHERE model = :model
                    UNION ALL
                    SELECT (SELECT min(f.version) FROM prediction_feedback AS f
                            WHERE f.model = :model AND f.version > seen.version)
                    FROM seen WHERE seen.version IS NOT NULL
                )
                SELECT version FROM seen WHERE version IS NOT NULL
                """
            ),
            {"model": model},
        )
        return sorted(row[0] for row in rows)

    async def feedback_sums(
        self,
        model: str,
        version: str,
        *,
        last: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> tuple[Any, ...]:
        """Over one version's feedback rows (its newest `last`, or those predicted in [since, until)):
        how many, how many correct, and the sums of log loss, absolute and squared error."""
        window = select(
            PredictionFeedback.correct, PredictionFeedback.log_loss, PredictionFeedback.abs_error
        ).where(PredictionFeedback.model == model, PredictionFeedback.version == version)
        rows = _windowed(
            window,
            PredictionFeedback.id,
            PredictionFeedback.predicted_at,
            last=last,
            since=since,
            until=until,
        ).subquery()
        query = select(
            func.count(),
            func.count(rows.c.correct),
            func.sum(rows.c.correct),
            func.sum(rows.c.log_loss),
            func.count(rows.c.abs_error),
            func.sum(rows.c.abs_error),
            func.sum(rows.c.abs_error * rows.c.abs_error),
        )
        return tuple((await self.session.execute(query)).one())

    async def add_drift_counts(self, rows: Sequence[dict[str, Any]]) -> None:
        """Rows added to each (model, version, period, feature, bin)'s count: an upsert, as another
        process counts the same periods. In key order, so two writers never take the same rows'
        locks in opposite orders (a deadlock on PostgreSQL)."""
        dialect = self.session.get_bind().dialect.name
        statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(DriftCount)
        key = ("model", "version", "period", "feature", "bin")  # the primary key
        statement = statement.on_conflict_do_update(
            index_elements=list(key), set_={"rows": DriftCount.rows + statement.excluded.rows}
        )
        await self.session.execute(statement, sorted(rows, key=lambda row: tuple(row[k] for k in key)))

    async def drift_start(self, model: str, version: str, last: int, *, counted: int) -> datetime | None:
        """The newest period from which on `version` was asked about at least `last` rows, as
        the counts of feature `counted` say (None: fewer than that in all). Read newest first, a
        batch of periods at a time (64, then twice as many each time): one short backward range of
        the primary key for the usual window, never every period of a long-lived version."""
        total, before, batch = 0, None, 64
        while True:
            query = (
                select(DriftCount.period, func.sum(DriftCount.rows))
                .where(
                    DriftCount.model == model, DriftCount.version == version, DriftCount.feature == counted
                )
                .group_by(DriftCount.period)
                .order_by(DriftCount.period.desc())
                .limit(batch)
            )
            if before is not None:
                query = query.where(DriftCount.period < before)
            periods = (await self.session.execute(query)).all()
            for period, rows in periods:
                total += int(rows)
                if total >= last:
                    found: datetime = period
                    return found
            if len(periods) < batch:
                return None
            before, batch = periods[-1][0], batch * 2

    async def drift_sums(
        self, model: str, version: str, *, since: datetime | None, until: datetime | None
    ) -> list[tuple[int, int, int]]:
        """(feature, bin, rows) of one version's counts in the periods that start in [since, until)."""
        query = select(DriftCount.feature, DriftCount.bin, func.sum(DriftCount.rows)).where(
            DriftCount.model == model, DriftCount.version == version
        )
        if since is not None:
            query = query.where(DriftCount.period >= since)
        if until is not None:
            query = query.where(DriftCount.period < until)
        rows = await self.session.execute(query.group_by(DriftCount.feature, DriftCount.bin))
        return [(int(feature), int(bin_), int(n)) for feature, bin_, n in rows]


def _windowed(
    query: _Query,
    id_column: Any,
    time_column: Any,
    *,
    last: int | None,
    since: datetime | None,
    until: datetime | None,
) -> _Query:
    """Live quality's window on `query`: its rows made in [since, until), and of those the newest
    `last` by id."""
    if since is not None:
        query = query.where(time_column >= since)
    if until is not None:
        query = query.where(time_column < until)
    if last is not None:
        query = query.order_by(id_column.desc()).limit(last)
    return query
