"""Token schemas for login, refresh and logout."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.schemas.common import RequestModel


class TokenPair(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_token: str = Field(description="Single use: exchange it at /auth/refresh for a new pair.")


class RefreshRequest(RequestModel):
    refresh_token: str = Field(min_length=1, max_length=256)
