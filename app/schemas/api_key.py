"""API key schemas. The secret appears in one response only: the one that creates the key."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, field_validator

from app.core.security import Scope
from app.schemas.common import NOT_CONVERTED, DisplayName, RequestModel, ResponseModel

# A key lives at most this long when an expiry is asked for (none asked: until revoked).
MAX_EXPIRES_IN_DAYS = 3650


class ApiKeyCreate(RequestModel):
    name: Annotated[
        DisplayName,
        Field(min_length=1, max_length=100, description="What the key is for (no control characters)."),
    ]
    scopes: Annotated[
        list[Scope],
        Field(
            min_length=1,
            max_length=len(Scope),
            description="What the key may do (docs/api.md), each scope once.",
            json_schema_extra={"uniqueItems": True},
        ),
    ]
    expires_in_days: Annotated[
        Annotated[int, Field(ge=1, le=MAX_EXPIRES_IN_DAYS), NOT_CONVERTED] | None,
        Field(description="Days until the key expires (default: never)."),
    ] = None

    @field_validator("scopes")
    @classmethod
    def _no_repeats(cls, scopes: list[Scope]) -> list[Scope]:
        if len(set(scopes)) != len(scopes):
            raise ValueError("each scope at most once")
        return scopes


class ApiKeyPublic(ResponseModel):
    id: int
    name: str
    prefix: str = Field(description="The key's first characters, to tell keys apart (not usable).")
    scopes: list[Scope]
    created_at: datetime
    last_used_at: datetime | None = Field(
        description="When it was last used (written every `API_KEY_USAGE_FLUSH_SECONDS`, so it may lag)."
    )
    expires_at: datetime | None
    revoked_at: datetime | None

    @field_validator("scopes", mode="before")
    @classmethod
    def _split(cls, scopes: object) -> object:
        return scopes.split() if isinstance(scopes, str) else scopes


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(
        description="The secret: shown in this response only, never again. Send it as "
        "`Authorization: Bearer <key>`."
    )
