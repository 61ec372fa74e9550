"""API8:2023 Security Misconfiguration: unsafe production settings refused, docs off in production,
CORS only for configured origins, security headers on every response, no stack trace anywhere."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from pydantic import ValidationError
from sqlalchemy.exc import ProgrammingError

from app.core.config import Settings
from app.main import create_app
from tests.conftest import Headers, assert_problem, make_settings
from tests.faults.server import ROOT, free_port, server_env, start_server
from tests.lifespan import lifespan
from tests.security.conftest import serve

STRONG_KEY = "k" * 16 + "Zq8#vT2!pL9@wX4$" + "m" * 16
PRODUCTION: dict[str, Any] = {
    "environment": "production",
    "password_hash_memory_kib": 19_456,
    "password_hash_time_cost": 2,
}


@pytest.mark.parametrize(
    "secret_key",
    [None, "", "short-key", "changeme", "secret", "x" * 31],
    ids=["unset", "empty", "short", "changeme", "secret", "31-chars"],
)
def test_production_refuses_a_weak_secret_key(secret_key: str | None) -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        make_settings("sqlite+aiosqlite:///:memory:", **PRODUCTION, secret_key=secret_key)


def test_production_refuses_weak_password_hashing_and_accepts_a_safe_configuration() -> None:
    with pytest.raises(ValidationError, match="PASSWORD_HASH"):
        make_settings(
            "sqlite+aiosqlite:///:memory:",
            **{**PRODUCTION, "password_hash_memory_kib": 1024},
            secret_key=STRONG_KEY,
        )
    safe = make_settings("sqlite+aiosqlite:///:memory:", **PRODUCTION, secret_key=STRONG_KEY)
    assert safe.environment == "production"
    assert not safe.show_docs


def test_the_server_will_not_start_in_production_with_a_weak_key(tmp_path: Path) -> None:
    env = server_env(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}", free_port(), ENVIRONMENT="production")
    env["SECRET_KEY"] = "changeme"
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    message = result.stderr.decode()
    assert "SECRET_KEY" in message
    assert "Traceback" not in message
    assert "changeme" not in message  # the weak value is not echoed into logs


@pytest.fixture
async def production(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(database_url, **PRODUCTION, secret_key=STRONG_KEY, access_log=False)
    async with serve(settings) as client:
        yield client


async def test_production_serves_no_docs_or_schema(production: httpx.AsyncClient) -> None:
    for path in ("/docs", "/redoc", "/openapi.json", "/static/docs/swagger-ui-bundle.js"):
        assert_problem(await production.get(path), 404)
    assert (await production.get("/healthz")).status_code == 200


async def test_security_headers_on_every_kind_of_response(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    responses = [
        await client.get("/healthz"),
        await client.get("/api/v1/users/me", headers=user_headers),
        await client.get("/api/v1/users/me"),  # 401
        await client.get("/nowhere"),  # 404
        await client.delete("/healthz"),  # 405
        await client.post("/api/v1/items", json={}, headers=user_headers),  # 422
        await client.post(
            "/api/v1/items",
            content=b"x" * 2_000_000,
            headers={**user_headers, "Content-Type": "application/json"},
        ),  # 413
    ]
    assert [r.status_code for r in responses] == [200, 200, 401, 404, 405, 422, 413]
    for response in responses:
        where = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
        assert response.headers.get("x-content-type-options") == "nosniff", where
        assert response.headers.get("x-frame-options") == "DENY", where
        assert response.headers.get("referrer-policy") == "no-referrer", where
        assert response.headers.get("content-security-policy", "").startswith("default-src 'none'"), where
        assert "strict-transport-security" not in response.headers, f"HSTS over plain http: {where}"
        assert response.headers.get("x-request-id"), where
    docs = await client.get("/docs")
    assert "script-src 'self'" in docs.headers["content-security-policy"]
    assert "unsafe-eval" not in docs.headers["content-security-policy"]


async def test_hsts_on_https_requests(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
        response = await client.get("/healthz")
    assert response.headers["strict-transport-security"].startswith("max-age=31536000")


async def test_cors_only_for_configured_origins(database_url: str) -> None:
    allowed, other = "https://app.example.com", "https://evil.example.net"
    settings = make_settings(database_url, cors_origins=[allowed], access_log=False)
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    async with serve(settings) as client:
        ok = await client.options("/api/v1/items", headers={"Origin": allowed, **preflight})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == allowed  # echoed, never "*"
        refused = await client.options("/api/v1/items", headers={"Origin": other, **preflight})
        assert_problem(refused, 400)
        assert "access-control-allow-origin" not in refused.headers
        simple = await client.get("/healthz", headers={"Origin": other})
        assert "access-control-allow-origin" not in simple.headers
    async with serve(make_settings(database_url, access_log=False)) as client:  # default: no origins
        response = await client.get("/healthz", headers={"Origin": allowed})
        assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("path", ["/api/v1/items", "/healthz", "/api/v1/auth/token", "/nope"])
async def test_a_preflight_without_configured_origins_is_the_400_problem(
    database_url: str, path: str
) -> None:
    """Issue 11, finding 4: with CORS_ORIGINS unset a preflight reached the router and got a 405
    (404 on an unknown path), not the refused-preflight 400 problem the docs describe."""
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
    async with serve(make_settings(database_url, access_log=False)) as client:
        refused = await client.options(path, headers=preflight)
        problem = assert_problem(refused, 400)
        assert problem["detail"] == "CORS preflight refused: Disallowed CORS origin."
        assert "access-control-allow-origin" not in refused.headers
        assert refused.headers["x-content-type-options"] == "nosniff"  # the request context ran
        # An OPTIONS that is no preflight is still the router's business.
        assert (await client.options(path)).status_code in (404, 405)
    settings = make_settings(database_url, cors_origins=["https://other.example.com"], access_log=False)
    async with serve(settings) as client:  # the same answer when origins are configured
        configured = assert_problem(await client.options(path, headers=preflight), 400)
        assert configured["detail"] == problem["detail"]


async def test_a_host_outside_trusted_hosts_is_refused(database_url: str) -> None:
    settings = make_settings(database_url, trusted_hosts=["api.example.com"], access_log=False)
    async with serve(settings) as client:
        assert_problem(await client.get("/healthz", headers={"Host": "evil.example.net"}), 400)
        assert (await client.get("/healthz", headers={"Host": "api.example.com"})).status_code == 200


SECRET_DETAIL = "db password is hunter2 at /srv/app/secret.py line 42"


@pytest.fixture
async def failing_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The real app plus routes that fail the ways code fails: a bug and a broken query."""
    app = create_app(settings)
    router = APIRouter()

    @router.get("/boom/bug")
    async def bug() -> None:
        raise RuntimeError(SECRET_DETAIL)

    @router.get("/boom/query")
    async def query() -> None:
        raise ProgrammingError("SELECT secret FROM nowhere", {}, Exception(SECRET_DETAIL))

    app.include_router(router)
    async with lifespan(app):
        yield app


@pytest.mark.parametrize("path", ["/boom/bug", "/boom/query"])
async def test_no_stack_trace_or_internal_detail_in_a_500(failing_app: FastAPI, path: str) -> None:
    transport = httpx.ASGITransport(app=failing_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get(path, headers={"X-Request-ID": "trace-me-123"})
    problem = assert_problem(response, 500)
    for leak in ("Traceback", "hunter2", "secret.py", "SELECT", "RuntimeError", "ProgrammingError", 'File "'):
        assert leak not in response.text, leak
    assert "trace-me-123" in problem["detail"]  # what to quote to the operator instead
    assert response.headers["x-request-id"] == "trace-me-123"


def test_the_real_server_names_no_software_and_answers_errors_as_problems(tmp_path: Path) -> None:
    env = server_env(f"sqlite+aiosqlite:///{tmp_path / 's.db'}", free_port())
    server = start_server(env, tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            responses = [
                client.get("/healthz"),
                client.get("/nowhere"),
                client.post("/api/v1/auth/token", content=b"{", headers={"Content-Type": "application/json"}),
            ]
        for response in responses:
            assert "server" not in response.headers, response.headers["server"]
            assert "x-powered-by" not in response.headers
            assert "Traceback" not in response.text
        for response in responses[1:]:
            assert response.headers["content-type"].startswith("application/problem+json")
    finally:
        server.stop()
    assert "Traceback" not in server.log_tail(200)
