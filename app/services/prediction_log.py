"""The prediction log writer: records queued by requests, written in batches by one background task.

Requests hand over plain data (a `PredictionEvent`), never their database session: the writer
opens its own sessions. A full queue drops the record, counts it and warns, so logging can never
slow predictions down or hold memory without bound.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import structlog

from app.core.errors import Forbidden
from app.core.security import Principal
from app.db.database import Database
from app.ml.drift import PERIOD_MINUTES, bin_counts
from app.ml.manifest import ModelSpec
from app.ml.predictions import PredictionResult
from app.models import PredictionRecord
from app.models.base import utcnow
from app.observability import metrics
from app.repositories.predictions import PredictionRepository
from app.services.pagination import decode_cursor, keyset_page

log = structlog.get_logger(__name__)

_STOP: dict[str, Any] = {}  # queued by close(); identity marks the end of the records
_ASKED = "asked"  # a queued row's key for its Asked, taken off before the row is written


@dataclass(frozen=True, slots=True)
class Asked:
    """A version's rows and its answers to them, counted for drift (app.ml.drift) by the writer,
    off the response path; made by `asked_of`, only where the version's entry has a reference."""

    spec: ModelSpec
    inputs: np.ndarray
    outputs: np.ndarray


@dataclass(frozen=True, slots=True)
class PredictionEvent:
    user_id: int
    model: str
    version: str
    rows: int
    latency_ms: float
    outcome: str
    inputs: Any | None = None
    prediction_id: uuid.UUID | None = None
    outputs: Any | None = None
    asked: Asked | None = None


def asked_of(spec: ModelSpec, result: PredictionResult) -> Asked | None:
    """What drift counts of a result: None where the version has no reference."""
    if spec.reference is None or result.inputs is None or result.outputs is None:
        return None
    return Asked(spec, result.inputs, result.outputs)


_COLUMNS = tuple(f.name for f in fields(PredictionEvent) if f.name != "asked")


class PredictionLog:
    def __init__(
        self,
        db: Database,
        *,
        queue_size: int,
        batch_size: int,
        flush_interval_s: float,
    ) -> None:
        self._db = db
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.written = 0
        self.failed = 0
        self._last_drop_warning = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="prediction-log-writer")

    def record(self, event: PredictionEvent) -> None:
        """Queue a record without waiting; drop it (counted) when the queue is full."""
        row = {name: getattr(event, name) for name in _COLUMNS}
        row["created_at"] = utcnow()
        if event.asked is not None:
            row[_ASKED] = event.asked
        self._put(row)

    def count(self, asked: Asked) -> None:
        """Rows a version answered that no record of this log stands for (a shadow's copies),
        counted for drift as a record's are."""
        self._put({_ASKED: asked})

    def record_shadow(self, row: dict[str, Any]) -> None:
        """A shadow's answer (a `shadow_records` row: app.services.shadow), queued as a record is."""
        row["created_at"] = utcnow()
        self._put(row)

    def _put(self, row: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            self.dropped += 1
            metrics.PREDICTION_LOG_DROPPED.inc()
            now = time.monotonic()
            if now - self._last_drop_warning > 5:  # one warning per 5 s, not one per record
                self._last_drop_warning = now
                log.warning("prediction_log_full", dropped_total=self.dropped)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            deadline = time.monotonic() + self._flush_interval_s
            while len(batch) < self._batch_size:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    row = await asyncio.wait_for(self._queue.get(), timeout)
                except TimeoutError:
                    break
                if row is _STOP:
                    stopping = True
                    break
                batch.append(row)
            await self._write(batch)

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        """Records, shadows' answers and drift's counts of one batch, in one transaction (one
        commit per batch: on SQLite, every commit holds the one writer lock)."""
        asked = [row.pop(_ASKED) for row in batch if _ASKED in row]
        batch = [row for row in batch if row]
        counts = _drift_counts(asked)
        if not batch and not counts:
            return
        try:
            records = [row for row in batch if "shadow_version" not in row]
            shadows = [row for row in batch if "shadow_version" in row]
            async with self._db.session() as session:
                repo = PredictionRepository(session)
                if records:
                    await repo.add_many(records)
                if shadows:
                    await repo.add_shadows(shadows)
                if counts:
                    await repo.add_drift_counts(counts)
                await session.commit()
            self.written += len(batch)
        except Exception as exc:  # noqa: BLE001 - a lost log batch must never stop the writer
            self.failed += len(batch)
            log.warning("prediction_log_write_failed", records=len(batch), error=type(exc).__name__)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Write everything queued so far, then stop the writer (cancelled after `timeout_s`)."""
        task, self._task = self._task, None
        if task is None:
            return
        try:
            # Queued behind every record, so all of them are written before the writer stops.
            await asyncio.wait_for(self._queue.put(_STOP), timeout_s)
            await asyncio.wait_for(task, timeout_s)
        except TimeoutError:
            task.cancel()
            log.warning("prediction_log_close_timeout", pending=self._queue.qsize())


def _drift_counts(asked: list[Asked]) -> list[dict[str, Any]]:
    """`drift_counts` rows for this period: each version's rows binned at once (app.ml.drift).
    Nothing if binning fails: the records are written all the same (the counts are lost, warned
    of)."""
    if not asked:
        return []
    now = utcnow()
    period = now.replace(minute=now.minute - now.minute % PERIOD_MINUTES, second=0, microsecond=0)
    by_version: dict[tuple[str, str], list[Asked]] = defaultdict(list)
    for a in asked:
        by_version[a.spec.name, a.spec.version].append(a)
    out: list[dict[str, Any]] = []
    try:
        for (model, version), group in by_version.items():
            x = np.concatenate([a.inputs for a in group])
            y = np.concatenate([a.outputs for a in group])
            out.extend(
                {"model": model, "version": version, "period": period, "feature": f, "bin": b, "rows": n}
                for f, b, n in bin_counts(group[0].spec, x, y)
            )
    except Exception as exc:  # noqa: BLE001 - drift is best effort; the log is not
        log.warning("drift_counts_failed", versions=len(by_version), error=type(exc).__name__)
        return []
    return out


class PredictionHistory:
    """Reading the log: a user's own records, or (admins) anyone's, newest first, by cursor."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def page(
        self, user: Principal, *, user_filter: int | None, cursor: str | None, limit: int
    ) -> tuple[Sequence[PredictionRecord], str | None]:
        if user_filter is not None and user_filter != user.id and not user.is_admin:
            raise Forbidden("Only admins may read other users' predictions.")
        owner = user.id if user_filter is None else user_filter
        before = decode_cursor(cursor) if cursor else None
        async with self.db.session(read_only=True) as session:
            rows = await PredictionRepository(session).before(owner, before, limit + 1)
        page = keyset_page(rows, limit, lambda row: row.id)
        return page.items, page.next_cursor
