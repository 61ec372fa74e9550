"""Item schemas, shared by /api/v1 and /api/v2."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, Field

from app.schemas.common import NO_NULL_IN_SCHEMA, RequestModel, ResponseModel, reject_null

Title = Annotated[str, Field(min_length=1, max_length=200)]
Description = Annotated[str, Field(max_length=5000)]


class ItemCreate(RequestModel):
    title: Title
    description: Description | None = None


class ItemUpdate(RequestModel):
    """Fields left out stay as they are. `title` may be left out but not set to null."""

    title: Annotated[Title | None, AfterValidator(reject_null), NO_NULL_IN_SCHEMA] = None
    description: Description | None = None


class ItemPublic(ResponseModel):
    id: int
    title: str
    description: str | None
    created_at: datetime
    updated_at: datetime
    owner_id: int


class ItemPage(ResponseModel):
    items: list[ItemPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")
