"""API keys: a user's credentials for programs, each with its own scopes, expiry and rate limit."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import IDS_NEVER_REUSED, Base, UTCDateTime, utcnow


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = IDS_NEVER_REUSED

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Deleting the user deletes their keys: the next request with one is refused.
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    # The start of the key (`mlk_` and 8 characters), shown in lists so a person can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    # HMAC-SHA256 of the whole key (app.core.security.ApiKeyCodec); the key itself is never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Space-separated `Scope` values.
    scopes: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Written in batches, not per request (app.services.api_keys.KeyRing): at most
    # `api_key_usage_flush_seconds` behind.
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
