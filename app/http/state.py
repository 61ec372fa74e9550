"""Everything the lifespan opens once per process and closes at shutdown, kept on `app.state`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.security import PasswordHasher, TokenCodec

if TYPE_CHECKING:
    from app.ml.registry import ModelRegistry
    from app.services.prediction_log import PredictionLog


@dataclass(slots=True)
class Resources:
    settings: Settings
    engine: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]
    hasher: PasswordHasher
    codec: TokenCodec
    registry: ModelRegistry
    prediction_log: PredictionLog
    migration_head: str | None = None
