"""Errors and bad input: every error is problem+json, with the right status, and never a traceback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import exc as sa_exc

from app.core.config import Settings
from app.http.state import state_of
from app.main import create_app
from tests.api.conftest import serve
from tests.conftest import PASSWORD, Headers, LogLines, assert_problem, make_settings

ITEMS = "/api/v1/items"
REGISTER = "/api/v1/auth/register"


# --- 400 ---


@pytest.mark.parametrize("body", [b'{"title": ', b"{'title': 'x'}", b"not json", b'{"title": "x"}}'])
async def test_malformed_json_is_400(client: httpx.AsyncClient, user_headers: Headers, body: bytes) -> None:
    response = await client.post(
        ITEMS, content=body, headers={**user_headers, "Content-Type": "application/json"}
    )
    problem = assert_problem(response, 400)
    assert "JSON" in problem["detail"]
    assert problem["instance"] == ITEMS


async def test_malformed_json_before_authentication_is_not_a_500(client: httpx.AsyncClient) -> None:
    response = await client.post(REGISTER, content=b"{", headers={"Content-Type": "application/json"})
    assert_problem(response, 400)


# --- 404, 405 ---


@pytest.mark.parametrize("path", ["/nope", "/api/v1/nope", "/api/v3/items", "/api/v1/items/1/extra"])
async def test_unknown_routes_are_404_problems(
    client: httpx.AsyncClient, user_headers: Headers, path: str
) -> None:
    body = assert_problem(await client.get(path, headers=user_headers), 404)
    assert body["instance"] == path
    assert path in body["detail"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", ITEMS, {"GET", "POST"}),
        ("DELETE", REGISTER, {"POST"}),
        ("POST", "/api/v1/items/1", {"GET", "PATCH", "DELETE"}),
        ("POST", "/healthz", {"GET"}),
    ],
)
async def test_wrong_method_is_405_with_allow(
    client: httpx.AsyncClient, user_headers: Headers, method: str, path: str, allowed: set[str]
) -> None:
    response = await client.request(method, path, headers=user_headers)
    body = assert_problem(response, 405)
    assert {m.strip() for m in response.headers["allow"].split(",")} >= allowed
    assert method in body["detail"]


# --- 413 ---


@pytest.fixture
def small_body_settings(settings: Settings) -> Settings:
    return make_settings(settings.database_url, max_request_body_bytes=2048)


async def test_body_over_the_limit_by_content_length_is_413(client: httpx.AsyncClient, app: FastAPI) -> None:
    limit = state_of(app).settings.max_request_body_bytes
    body = json.dumps({"email": "big@example.com", "password": "p" * limit}).encode()
    response = await client.post(REGISTER, content=body, headers={"Content-Type": "application/json"})
    problem = assert_problem(response, 413)
    assert str(limit) in problem["detail"]
    # Nothing was created.
    again = await client.post(REGISTER, json={"email": "big@example.com", "password": PASSWORD})
    assert again.status_code == 201


async def test_a_chunked_body_over_the_limit_is_413(client: httpx.AsyncClient, user_headers: Headers) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"title": "big", "description": "'
        for _ in range(80):
            yield b"d" * 16_384
        yield b'"}'

    request = client.build_request(
        "POST", ITEMS, content=chunks(), headers={**user_headers, "Content-Type": "application/json"}
    )
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    response = await client.send(request)
    assert_problem(response, 413)
    assert (await client.get(ITEMS, headers=user_headers)).headers["x-total-count"] == "0"


async def test_a_small_chunked_body_is_accepted(client: httpx.AsyncClient, user_headers: Headers) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"title": '
        yield b'"chunked"}'

    response = await client.post(
        ITEMS, content=chunks(), headers={**user_headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["title"] == "chunked"


async def test_413_limit_is_configurable(small_body_settings: Settings) -> None:
    async with serve(small_body_settings) as client:
        ok = await client.post(REGISTER, json={"email": "a@example.com", "password": "p" * 100})
        assert ok.status_code == 201
        big = await client.post(REGISTER, json={"email": "b@example.com", "password": "p" * 3000})
        assert_problem(big, 413)


async def test_a_non_numeric_content_length_is_400(client: httpx.AsyncClient) -> None:
    # httpx would correct the header; send the raw ASGI request instead.
    app = client._transport.app  # type: ignore[attr-defined]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": REGISTER,
        "raw_path": REGISTER.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"abc"), (b"host", b"t")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 400
    headers = dict(sent[0]["headers"])  # type: ignore[arg-type]
    assert headers[b"content-type"] == b"application/problem+json"


# --- 415 ---


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "application/x-www-form-urlencoded"]
)
async def test_json_sent_with_another_content_type_is_415(
    client: httpx.AsyncClient, user_headers: Headers, content_type: str
) -> None:
    response = await client.post(
        ITEMS, content=b'{"title": "x"}', headers={**user_headers, "Content-Type": content_type}
    )
    body = assert_problem(response, 415)
    assert "application/json" in body["detail"]
    assert (await client.get(ITEMS, headers=user_headers)).headers["x-total-count"] == "0"


async def test_json_with_a_charset_is_accepted(client: httpx.AsyncClient, user_headers: Headers) -> None:
    response = await client.post(
        ITEMS,
        content=b'{"title": "x"}',
        headers={**user_headers, "Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 201


async def test_register_as_text_plain_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        REGISTER,
        content=json.dumps({"email": "t@example.com", "password": PASSWORD}),
        headers={"Content-Type": "text/plain"},
    )
    assert_problem(response, 415)


async def test_login_form_sent_as_json_is_not_a_500(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/token", json={"username": "x@example.com", "password": PASSWORD}
    )
    assert response.status_code in {415, 422}
    assert_problem(response, response.status_code)


# --- 422 ---


async def test_validation_errors_name_public_fields(client: httpx.AsyncClient, user_headers: Headers) -> None:
    response = await client.post(
        ITEMS, json={"title": "", "description": 5, "extra": 1}, headers=user_headers
    )
    body = assert_problem(response, 422)
    fields = {error["field"] for error in body["errors"]}
    assert fields == {"title", "description", "extra"}
    assert all(error["message"] for error in body["errors"])
    assert body["type"].endswith("/validation-error")
    assert "body" not in json.dumps(body["errors"])


@pytest.mark.parametrize("payload", [[{"title": "x"}], "just a string", 42, None])
async def test_a_body_of_the_wrong_shape_is_a_422(
    client: httpx.AsyncClient, user_headers: Headers, payload: object
) -> None:
    response = await client.post(
        ITEMS, content=json.dumps(payload), headers={**user_headers, "Content-Type": "application/json"}
    )
    body = assert_problem(response, 422)
    assert body["errors"]


# --- 500 ---


def _app_that_fails(settings: Settings) -> FastAPI:
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("internal detail: hashed_password=$argon2id$secret, at app/services/x.py")

    @app.get("/boom-sql")
    async def boom_sql() -> None:
        raise sa_exc.IntegrityError("INSERT INTO users ...", {}, Exception("UNIQUE constraint failed"))

    return app


@pytest.mark.parametrize("path", ["/boom", "/boom-sql"])
async def test_an_unexpected_error_is_a_generic_500_with_the_request_id(
    settings: Settings, log_lines: LogLines, path: str
) -> None:
    async with serve(settings, _app_that_fails(settings)) as client:
        response = await client.get(path, headers={"X-Request-ID": "trace-me-500"})
    body = assert_problem(response, 500)
    assert response.headers["x-request-id"] == "trace-me-500"
    assert "trace-me-500" in body["detail"]
    for leak in ("internal detail", "argon2", "RuntimeError", "IntegrityError", "INSERT", "UNIQUE", "app/"):
        assert leak not in response.text
    # The detail is in the log, with the request id.
    errors = [line for line in log_lines() if line.get("event") == "unhandled_error"]
    assert errors
    assert errors[0]["request_id"] == "trace-me-500"


# --- 503 ---


@pytest.fixture(params=["postgresql-closed-port", "sqlite-unreadable-path"])
def unreachable_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "postgresql-closed-port":
        url = "postgresql+asyncpg://nobody:nothing@127.0.0.1:1/nowhere"
    else:
        # A directory where the database file should be: SQLite cannot open it.
        url = f"sqlite+aiosqlite:///{tmp_path}"
    return make_settings(url, db_pool_timeout=2.0)


async def test_an_unreachable_database_is_a_quick_503(unreachable_settings: Settings) -> None:
    async with serve(unreachable_settings) as client:
        registered = await asyncio.wait_for(
            client.post(REGISTER, json={"email": "x@example.com", "password": PASSWORD}), timeout=30
        )
        body = assert_problem(registered, 503)
        assert registered.headers["retry-after"]
        assert "database" in body["detail"].lower()
        token = await asyncio.wait_for(
            client.post("/api/v1/auth/token", data={"username": "x@example.com", "password": PASSWORD}),
            timeout=30,
        )
        assert_problem(token, 503)
        assert_problem(await asyncio.wait_for(client.get("/readyz"), timeout=30), 503)
        health = await client.get("/healthz")
        assert health.status_code == 200


# --- X-Request-ID ---


async def test_a_well_formed_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "abc-123_x.y:z"})
    assert response.headers["x-request-id"] == "abc-123_x.y:z"


@pytest.mark.parametrize("incoming", ["x" * 300, "has spaces in it", "semi;colon", "<script>"])
async def test_a_malformed_request_id_is_replaced(client: httpx.AsyncClient, incoming: str) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": incoming})
    replaced = response.headers["x-request-id"]
    assert replaced
    assert replaced != incoming
    assert len(replaced) <= 128
    assert " " not in replaced


async def test_a_request_id_is_made_when_none_is_sent(client: httpx.AsyncClient) -> None:
    first = (await client.get("/healthz")).headers["x-request-id"]
    second = (await client.get("/healthz")).headers["x-request-id"]
    assert first
    assert first != second


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nope", 404), ("GET", "/api/v1/users/me", 401), ("PUT", ITEMS, 405), ("POST", REGISTER, 422)],
)
async def test_errors_carry_the_request_id(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    response = await client.request(method, path, headers={"X-Request-ID": "err-id-1"})
    assert_problem(response, status)
    assert response.headers["x-request-id"] == "err-id-1"


async def test_a_413_carries_the_request_id(client: httpx.AsyncClient) -> None:
    response = await client.post(
        REGISTER,
        content=b"x" * 2_000_000,
        headers={"Content-Type": "application/json", "X-Request-ID": "big-1"},
    )
    assert_problem(response, 413)
    assert response.headers["x-request-id"] == "big-1"


async def test_middleware_refusals_under_v2_come_in_the_protocols_error_shape(settings: Settings) -> None:
    """A client of the Open Inference Protocol parses `{"error": ...}`; the refusals that middleware
    makes before a route runs (a body over the limit by Content-Length, too many headers, a Host
    outside TRUSTED_HOSTS) came as problem details under /v2. Elsewhere they still are."""
    limited = make_settings(
        settings.database_url, max_request_body_bytes=64, max_request_headers=20, trusted_hosts=["testserver"]
    )
    infer = "/v2/models/iris/infer"
    async with serve(limited) as client:
        too_big = await client.post(infer, content=b"{" + b" " * 100 + b"}")
        many_headers = await client.get("/v2", headers={f"x-h{i}": "1" for i in range(30)})
        foreign_host = await client.get("/v2", headers={"Host": "evil.com"})
        api_too_big = await client.post(REGISTER, content=b"{" + b" " * 100 + b"}")
    for response, status in ((too_big, 413), (many_headers, 431), (foreign_host, 400)):
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        assert set(response.json()) == {"error"}, response.text
    assert_problem(api_too_big, 413)
