"""The fleet's desired model state (app.ml.fleet): one row, the current state, and its history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import IDS_NEVER_REUSED, Base, UTCDateTime, utcnow


class ModelState(Base):
    """At most one row (id 1); none until the first change (until then every process serves the
    manifest's seed). Each change rewrites it with `revision` one higher, guarded by the revision
    it read, so two concurrent changes cannot both apply to the same state."""

    __tablename__ = "model_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(Integer)
    # FleetState.document(): what is loaded and where each alias points.
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    changed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ModelStateChange(Base):
    """Who changed the state, when, and what they did: one row per revision."""

    __tablename__ = "model_state_changes"
    __table_args__ = IDS_NEVER_REUSED

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, unique=True)
    changed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    action: Mapped[str] = mapped_column(String(300))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
