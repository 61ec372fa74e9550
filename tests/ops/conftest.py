"""Helpers for the operations tests: an app of its own settings with its lifespan run."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from app.main import create_app
from tests.conftest import PASSWORD, Headers, empty_database, make_settings
from tests.lifespan import lifespan


@asynccontextmanager
async def running_app(
    database_url: str, *, base_url: str = "http://testserver", **overrides: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app built from the test settings plus `overrides`, and a client for it."""
    app = create_app(make_settings(database_url, **overrides))
    try:
        async with lifespan(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
                yield app, client
    finally:
        await empty_database(database_url)  # the next test starts from empty tables, as with `app`


def new_email() -> str:
    return f"ops-{uuid.uuid4().hex[:12]}@example.com"


async def register(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/api/v1/auth/token", data={"username": email, "password": password})


async def user(client: httpx.AsyncClient, email: str | None = None) -> Headers:
    email = email or new_email()
    assert (await register(client, email)).status_code == 201
    response = await login(client, email)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}
