"""The prediction log: one row per prediction request, written in batches off the request path;
and the truths sent back for them later (feedback), one row per scored input row."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import IDS_NEVER_REUSED, Base, UTCDateTime, utcnow


class PredictionRecord(Base):
    __tablename__ = "prediction_records"
    __table_args__ = (
        # The one listing: a user's records, newest first, by id.
        Index("ix_prediction_records_user_id_id", "user_id", "id"),
        Index("ix_prediction_records_prediction_id", "prediction_id", unique=True),
        IDS_NEVER_REUSED,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The id the answer carried (app.core.ids); None for records older than it, and for jobs'.
    prediction_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(50))
    rows: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    # "ok", or the problem code of the failure (timeout, overloaded, worker-crashed, ...).
    outcome: Mapped[str] = mapped_column(String(50))
    # Only where the model's manifest allows storing inputs (`log_inputs`).
    inputs: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    # What the model answered, per row: its probabilities in label order (classifiers) or its
    # value (regressors); what feedback is scored against. None for a failed prediction.
    outputs: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PredictionFeedback(Base):
    """One row's truth, sent once, scored against what was answered when it arrives: the figures
    of live quality are sums over these rows by model and version."""

    __tablename__ = "prediction_feedback"
    __table_args__ = (
        # A row's truth once per version that answered it: the primary's, and each shadow's.
        UniqueConstraint("record_id", "version", "row", name="uq_prediction_feedback_record_id_version_row"),
        # Live quality's windows: a version's newest rows, or those predicted in a time range.
        Index("ix_prediction_feedback_model_version_id", "model", "version", "id"),
        Index("ix_prediction_feedback_model_version_predicted_at", "model", "version", "predicted_at"),
        IDS_NEVER_REUSED,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_id: Mapped[int] = mapped_column(ForeignKey("prediction_records.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(50))
    row: Mapped[int] = mapped_column(Integer)
    # Classifiers: the true label, whether the answer's label was it, and -ln(p) of it.
    label: Mapped[str | None] = mapped_column(String(100), nullable=True)
    correct: Mapped[int | None] = mapped_column(Integer, nullable=True)
    log_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Regressors: the true value and the answer's error (absolute; squared for RMSE).
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    abs_error: Mapped[float | None] = mapped_column(Float, nullable=True)
    predicted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ShadowRecord(Base):
    """A shadow's answer to a copy of one prediction's request (app.services.shadow), beside the
    primary's record (`prediction_id`), with how far the two agreed."""

    __tablename__ = "shadow_records"
    __table_args__ = (
        Index("ix_shadow_records_model_id", "model", "id"),
        Index("ix_shadow_records_prediction_id", "prediction_id"),
        Index("ix_shadow_records_model_created_at", "model", "created_at"),
        IDS_NEVER_REUSED,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prediction_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(50))  # the primary's, which answered
    shadow_version: Mapped[str] = mapped_column(String(50))
    rows: Mapped[int] = mapped_column(Integer)
    # Classifiers: rows whose labels were the same. Regressors: the sum of |shadow - primary|.
    agreed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    abs_difference: Mapped[float | None] = mapped_column(Float, nullable=True)
    outputs: Mapped[Any] = mapped_column(JSON)
    latency_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DriftCount(Base):
    """Rows a version was asked about, per feature and bin of its reference (app.ml.drift), summed
    by ten-minute period: a window's drift is a sum over these, never a read of the log's rows."""

    __tablename__ = "drift_counts"

    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[str] = mapped_column(String(50), primary_key=True)
    # The start of the period the rows were logged in (UTC; app.ml.drift.PERIOD_MINUTES long).
    period: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    # The feature's index in the version's manifest entry; -1: the answers.
    feature: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    bin: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    rows: Mapped[int] = mapped_column(Integer)
