"""The prediction log writer: records queued by requests, written in batches by one background task.

Requests hand over plain data (a `PredictionEvent`), never their database session: the writer
opens its own sessions. A full queue drops the record, counts it and warns, so logging can never
slow predictions down or hold memory without bound.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from app.core.errors import Forbidden
from app.core.security import Principal
from app.db.database import Database
from app.models import PredictionRecord
from app.models.base import utcnow
from app.observability import metrics
from app.repositories.predictions import PredictionRepository
from app.services.pagination import decode_cursor, keyset_page

log = structlog.get_logger(__name__)

_STOP: dict[str, Any] = {}  # queued by close(); identity marks the end of the records


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
        row = asdict(event)
        row["created_at"] = utcnow()
        self._put(row)

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
        try:
            records = [row for row in batch if "shadow_version" not in row]
            shadows = [row for row in batch if "shadow_version" in row]
            async with self._db.session() as session:
                repo = PredictionRepository(session)
                if records:
                    await repo.add_many(records)
                if shadows:
                    await repo.add_shadows(shadows)
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
