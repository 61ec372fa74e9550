"""ORM models. Importing this package registers every table on `Base.metadata` (for Alembic)."""

from app.models.api_key import ApiKey
from app.models.base import Base
from app.models.item import Item
from app.models.job import Job, JobInputSegment, JobResultChunk
from app.models.model_state import ModelState, ModelStateChange
from app.models.prediction import DriftCount, PredictionFeedback, PredictionRecord, ShadowRecord
from app.models.user import AuthSession, RefreshToken, User

__all__ = [
    "ApiKey",
    "AuthSession",
    "Base",
    "DriftCount",
    "Item",
    "Job",
    "JobInputSegment",
    "JobResultChunk",
    "ModelState",
    "ModelStateChange",
    "PredictionFeedback",
    "PredictionRecord",
    "RefreshToken",
    "ShadowRecord",
    "User",
]
