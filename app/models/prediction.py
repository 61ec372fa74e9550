"""The prediction log: one row per prediction request, written in batches off the request path."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import IDS_NEVER_REUSED, Base, UTCDateTime, utcnow


class PredictionRecord(Base):
    __tablename__ = "prediction_records"
    # The one listing: a user's records, newest first, by id.
    __table_args__ = (Index("ix_prediction_records_user_id_id", "user_id", "id"), IDS_NEVER_REUSED)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(50))
    rows: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    # "ok", or the problem code of the failure (timeout, overloaded, worker-crashed, ...).
    outcome: Mapped[str] = mapped_column(String(50))
    # Only where the model's manifest allows storing inputs (`log_inputs`).
    inputs: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
