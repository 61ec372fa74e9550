"""Helpers for the HTTP tests: logging in for a full token pair, and building extra apps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from app.core.config import Settings
from app.main import create_app
from tests.conftest import PASSWORD, Headers
from tests.lifespan import lifespan


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    """The token pair of a fresh login (a new login session)."""
    response = await client.post("/api/v1/auth/token", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer(access_token: str) -> Headers:
    return {"Authorization": f"Bearer {access_token}"}


async def register(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> Headers:
    """A new user's bearer header: registered (201), then logged in."""
    made = await client.post("/api/v1/auth/register", json={"email": email, "password": password})
    assert made.status_code == 201, made.text
    return bearer((await login(client, email, password))["access_token"])


async def user_id(client: httpx.AsyncClient, headers: Headers) -> int:
    response = await client.get("/api/v1/users/me", headers=headers)
    assert response.status_code == 200, response.text
    return int(response.json()["id"])


@asynccontextmanager
async def serve(settings: Settings, app: FastAPI | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """A client for an app of its own (other settings), with its lifespan run."""
    application = app or create_app(settings)
    async with lifespan(application) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
