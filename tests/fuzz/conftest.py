"""The fuzzed service: one app per module, its lifespan run by schemathesis's ASGI transport.

schemathesis calls the app from its own event-loop thread and starts the app's lifespan there
(`python.asgi`), so the app is not the `app` fixture (whose engine belongs to the test's loop).
The tables it fills are emptied when the module ends.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from schemathesis.python import asgi

from app.db.engine import create_engine
from app.http.limiter import Limits
from app.http.state import state_of
from app.main import create_app
from tests.conftest import PASSWORD, empty_tables, make_settings

# Checks switched off while a finding they report is open, for one operation (or all: None). Each
# finding is pinned by a strict-xfail test in test_fuzz_findings.py; the entry is removed together
# with the fix, so the fuzzer watches for a regression from then on.
SUSPENDED_CHECKS: dict[tuple[str, str | None], str] = {}

# Not findings: schema-valid requests these operations rightly refuse, which positive_data_acceptance
# would flag. An opaque cursor is any string to the schema, but only the ones the API returned are
# valid; a prediction's rows must match the chosen model's features, which one schema cannot say
# (nor that the protocol's outputs name each output once: `uniqueItems` compares whole objects).
SCHEMA_CANNOT_SAY = frozenset(
    {
        "GET /api/v2/items",
        "GET /api/v1/predictions",
        "GET /api/v1/jobs",
        "POST /api/v1/predict",
        "POST /api/v1/predict-heavy",
        "POST /api/v1/models/{name}/predict",
        "POST /api/v1/models/{name}/versions/{version}/predict",
        "POST /v2/models/{name}/infer",
        "POST /v2/models/{name}/versions/{version}/infer",
        # A job's rows (a file, or JSON rows) must match the chosen model's features too.
        "POST /api/v1/jobs",
    }
)


def excluded_checks(label: str) -> list[str]:
    excluded = [check for (check, operation) in SUSPENDED_CHECKS if operation in (None, label)]
    if label in SCHEMA_CANNOT_SAY:
        excluded.append("positive_data_acceptance")
    return excluded


@dataclass
class FuzzTarget:
    """The running app, a client on it, and a registered user's credentials."""

    app: FastAPI
    client: asgi.ASGIClient
    database_url: str
    email: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def reset(self) -> None:
        """Empty tables, fresh rate-limit counters and a freshly registered, logged-in user: the
        state every scenario starts from. The counters too: hypothesis replays a failing scenario,
        and with the earlier scenarios' counts in the limiter the replay met other 429s, drew
        other steps and ended in `FlakyStrategyDefinition` (twice under load, 2026-12-07), hiding
        the failure it was replaying."""
        asyncio.run(_empty_tables(self.database_url))
        state_of(self.app).resources.limits = Limits(state_of(self.app).settings)
        self.email = f"fuzz-{uuid.uuid4().hex[:8]}@example.com"
        self.headers = {}
        registered = self._harness_post(
            "/api/v1/auth/register", json={"email": self.email, "password": PASSWORD}
        )
        assert registered.status_code == 201, registered.text
        self.headers = self.login()

    def login(self) -> dict[str, str]:
        if self.headers:  # the fuzzer may have changed the user's email with PATCH /users/me
            self.email = self.client.get("/api/v1/users/me", headers=self.headers).json()["email"]
        response = self._harness_post(
            "/api/v1/auth/token", data={"username": self.email, "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    def _harness_post(self, path: str, **kwargs: Any) -> Any:
        """The harness's own registration or log-in. With the limits on, the fuzzer's calls may have
        used up the shipped per-address (or per-account) allowance, which also refuses the harness:
        it is not what is tested, so it starts a fresh window (new counters, same limits) and goes on.
        """
        response = self.client.post(path, **kwargs)
        if response.status_code == 429:
            state_of(self.app).resources.limits = Limits(state_of(self.app).settings)
            response = self.client.post(path, **kwargs)
        return response

    def headers_for(self, path: str) -> dict[str, str]:
        """The shared token, or a fresh one for operations that end the caller's login session."""
        if path.endswith(("/auth/logout", "/users/me/password")):
            return self.login()
        return self.headers


async def _empty_tables(database_url: str) -> None:
    engine = create_engine(make_settings(database_url))
    try:
        await empty_tables(engine)
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def fuzz_target(database_url: str) -> Iterator[FuzzTarget]:
    # Models on (a prediction is a real one), rate limits off: the stateless run sends every
    # operation many valid requests in a row, which a limit would refuse (and positive-data checks
    # would flag). The stateful run has them on (`limited_fuzz_target`).
    yield from _target(database_url, rate_limit_enabled=False)


@pytest.fixture
def limited_fuzz_target(database_url: str) -> Iterator[FuzzTarget]:
    """Rate limits on, as shipped (the defaults of Settings): a 429 the fuzzer provokes must be a
    documented response like any other."""
    yield from _target(database_url)


def _target(database_url: str, **overrides: Any) -> Iterator[FuzzTarget]:
    settings = make_settings(database_url, access_log=False, ml_enabled=True, **overrides)
    app = create_app(settings)
    try:
        with asgi.get_client(app) as client:  # starts the lifespan in schemathesis's loop thread
            target = FuzzTarget(app, client, database_url)
            target.reset()
            yield target
    finally:
        asgi.shutdown_lifespans()
        asyncio.run(_empty_tables(database_url))


def problem_details_check(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx and 5xx is RFC 9457 problem details: the content type and the required members.
    Under /v2 (the Open Inference Protocol) errors are the protocol's `{"error": "..."}` instead."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    if case.operation.path == "/v2" or case.operation.path.startswith("/v2/"):
        assert content_type.startswith("application/json"), content_type
        assert isinstance(response.json().get("error"), str), response.text
        return True
    assert content_type.startswith("application/problem+json"), (
        f"{response.status_code} served as {content_type!r}, not application/problem+json"
    )
    body = response.json()
    assert body.get("status") == response.status_code, body
    assert {"type", "title", "detail"} <= body.keys(), body
    assert "Traceback" not in response.text
    return True
