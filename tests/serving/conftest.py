"""An app with the bundled models loaded, shared by a module's tests (starting the model worker
processes once per module, not once per test)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from fastapi import FastAPI

from app.main import create_app
from tests.conftest import PASSWORD, empty_database, make_settings
from tests.lifespan import lifespan
from tests.ml.conftest import make_model_dir  # noqa: F401 - the fixture, for tests with edited manifests


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ml_app(database_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(
        make_settings(database_url, ml_enabled=True, prediction_log_flush_ms=20, rate_limit_enabled=False)
    )
    try:
        async with lifespan(application):
            yield application
    finally:
        await empty_database(database_url)  # after the shutdown has written its last records


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ml_client(ml_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=ml_app), base_url="http://testserver"
    ) as c:
        yield c


async def login(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    """Register (if new) and log in; returns the Authorization header."""
    await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    token = await client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}
