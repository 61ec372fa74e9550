"""Helpers for the HTTP tests: logging in for a full token pair, and building extra apps."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import structlog
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.core.config import Settings
from app.main import create_app
from tests.conftest import PASSWORD, Headers


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    """The token pair of a fresh login (a new login session)."""
    response = await client.post("/api/v1/auth/token", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer(access_token: str) -> Headers:
    return {"Authorization": f"Bearer {access_token}"}


async def user_id(client: httpx.AsyncClient, headers: Headers) -> int:
    response = await client.get("/api/v1/users/me", headers=headers)
    assert response.status_code == 200, response.text
    return int(response.json()["id"])


@asynccontextmanager
async def serve(settings: Settings, app: FastAPI | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """A client for an app of its own (other settings), with its lifespan run."""
    application = app or create_app(settings)
    async with LifespanManager(application) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


LogLines = Callable[[], list[dict[str, Any]]]

_PRINT_LOGGER_METHODS = (
    *("msg", "log", "debug", "info", "warn", "warning"),
    *("fatal", "failure", "err", "error", "critical", "exception"),
)


@pytest.fixture
def log_lines(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> LogLines:
    """The JSON log lines written so far in this test (capsys), parsed.

    app/core/logging.py hands structlog `sys.stdout` as it is when the app is built, and loggers
    are cached on first use: a logger first used in another test keeps writing to that test's
    (possibly closed) stream. For this test every structlog line goes to the current stdout, and
    loggers first used here are made with structlog's default (follows `sys.stdout`) so they do
    not keep capsys's stream after the test.
    """
    factory = structlog.PrintLoggerFactory
    monkeypatch.setattr(structlog, "PrintLoggerFactory", lambda *_args, **_kwargs: factory())

    def _print(_self: object, message: str) -> None:
        print(message, file=sys.stdout, flush=True)

    for name in _PRINT_LOGGER_METHODS:
        monkeypatch.setattr(structlog.PrintLogger, name, _print)

    def _read() -> list[dict[str, Any]]:
        lines = capsys.readouterr().out.splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    return _read
