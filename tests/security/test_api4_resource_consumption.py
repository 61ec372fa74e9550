"""API4:2023 Unrestricted Resource Consumption: bodies, JSON shape, page and batch sizes, rate limits.

Every limit answers with problem details (413, 422, 429), never a 500 and never after reading an
oversized body into memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import PASSWORD, Headers, assert_problem, make_settings
from tests.security.conftest import api_routes, serve

MAX_BODY = 1_048_576  # the default max_request_body_bytes


async def test_a_body_over_the_limit_is_413_before_it_is_read(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    body = b'{"title": "' + b"x" * (MAX_BODY + 1) + b'"}'
    response = await client.post(
        "/api/v1/items", content=body, headers={**user_headers, "Content-Type": "application/json"}
    )
    body_json = assert_problem(response, 413)
    assert str(MAX_BODY) in body_json["detail"]


async def test_a_chunked_body_over_the_limit_is_413(client: httpx.AsyncClient, user_headers: Headers) -> None:
    """No Content-Length to decide from: the limit is enforced while the body streams in."""
    chunks_sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal chunks_sent
        yield b'{"title": "'
        for _ in range(40):  # 40 x 64 KiB = 2.5 MiB
            chunks_sent += 1
            yield b"x" * 65_536
        yield b'"}'

    response = await client.post(
        "/api/v1/items", content=chunks(), headers={**user_headers, "Content-Type": "application/json"}
    )
    assert_problem(response, 413)
    # Answered while the body was still streaming: the transport hands the app one chunk per
    # receive(), and the app stopped asking at the chunk that crossed 1 MiB (11 + 16 x 64 KiB
    # bytes), 24 chunks before the client would have finished.
    assert chunks_sent == MAX_BODY // 65_536, chunks_sent
    assert (await client.get("/api/v1/items", headers=user_headers)).json() == []


@pytest.mark.parametrize("depth", [1_000, 100_000])
async def test_deeply_nested_json_is_a_client_error(
    client: httpx.AsyncClient, user_headers: Headers, depth: int
) -> None:
    for body in ("[" * depth + "]" * depth, '{"title": ' + '{"a": ' * depth + "1" + "}" * depth + "}"):
        assert len(body) < MAX_BODY
        response = await client.post(
            "/api/v1/items", content=body, headers={**user_headers, "Content-Type": "application/json"}
        )
        assert response.status_code in (400, 422), response.text[:300]
        assert_problem(response, response.status_code)


async def test_huge_json_within_the_limit_is_refused_quickly(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    many_keys = {"title": "t", **{f"k{i}": i for i in range(60_000)}}
    long_array = {"title": "t", "description": list(range(150_000))}
    long_title = {"title": "x" * 900_000}
    for body in (many_keys, long_array, long_title):
        response = await client.post("/api/v1/items", json=body, headers=user_headers)
        problem = assert_problem(response, 422)
        # Errors are summarised, not one per key: the answer stays small.
        assert len(response.content) < 20_000, (len(response.content), problem["detail"])
    assert (await client.get("/api/v1/items", headers=user_headers)).json() == []


async def test_every_page_size_over_its_cap_is_refused(
    client: httpx.AsyncClient, app: FastAPI, user_headers: Headers, admin_headers: Headers
) -> None:
    """Every paginated route (found in the document: a `limit` query parameter with a maximum)."""
    document = app.openapi()
    checked = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            limit = next((p for p in operation.get("parameters", []) if p["name"] == "limit"), None)
            if limit is None or "{" in path:
                continue
            cap = limit["schema"]["maximum"]
            assert cap <= 1000, f"{path}: a page of {cap} is too large to be a cap"
            headers = admin_headers  # admin routes included; admins pass every role check
            for too_big in (cap + 1, 10**9, -1, 0):
                response = await client.request(method, path, params={"limit": too_big}, headers=headers)
                assert_problem(response, 422)
            ok = await client.request(method, path, params={"limit": cap}, headers=headers)
            assert ok.status_code == 200, f"{path}?limit={cap}: {ok.text}"
            checked.append(path)
    assert {"/api/v1/items", "/api/v2/items", "/api/v1/users"} <= set(checked), checked
    assert_problem(await client.get("/api/v1/items", params={"offset": 10**12}, headers=user_headers), 422)


@pytest.fixture
async def ml_client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(database_url, ml_enabled=True, rate_limit_enabled=False, access_log=False)
    async with serve(settings) as client:
        yield client


async def _login(client: httpx.AsyncClient, email: str) -> Headers:
    assert (
        await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    ).is_success
    token = await client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


async def test_a_batch_over_a_models_cap_is_refused(ml_client: httpx.AsyncClient) -> None:
    headers = await _login(ml_client, "batch@example.com")
    models: list[dict[str, Any]] = (await ml_client.get("/api/v1/models", headers=headers)).json()
    assert models
    for model in models:
        row = [1.0] * len(model["features"])
        url = f"/api/v1/models/{model['name']}/predict"
        at_cap = await ml_client.post(url, json={"rows": [row] * model["max_batch_size"]}, headers=headers)
        assert at_cap.status_code == 200, at_cap.text
        over = await ml_client.post(
            url, json={"rows": [row] * (model["max_batch_size"] + 1)}, headers=headers
        )
        assert over.status_code in (413, 422), over.text
        assert_problem(over, over.status_code)


async def test_logins_over_the_rate_limit_get_429_with_retry_after(database_url: str) -> None:
    settings = make_settings(
        database_url,
        rate_limit_enabled=True,
        rate_limit_auth_per_account="3/minute",
        rate_limit_auth_per_address="100/minute",
        access_log=False,
    )
    async with serve(settings) as client:
        email = "guessed@example.com"
        await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        statuses = []
        for _ in range(5):
            response = await client.post(
                "/api/v1/auth/token", data={"username": email, "password": "guess-1234"}
            )
            statuses.append(response.status_code)
        assert statuses[:3] == [401, 401, 401]
        assert statuses[3:] == [429, 429]
        assert_problem(response, 429)
        assert int(response.headers["retry-after"]) >= 1
        # The right password does not get through either while the account is limited.
        right = await client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
        assert_problem(right, 429)


async def test_authenticated_requests_over_the_per_user_limit_get_429(database_url: str) -> None:
    settings = make_settings(
        database_url, rate_limit_enabled=True, rate_limit_per_user="5/minute", access_log=False
    )
    async with serve(settings) as client:
        headers = await _login(client, "busy@example.com")
        statuses = [(await client.get("/api/v1/users/me", headers=headers)).status_code for _ in range(7)]
        assert statuses.count(200) == 5
        assert statuses[-1] == 429


async def test_every_route_is_covered_by_a_limit_or_needs_no_token(app: FastAPI) -> None:
    """Routes without a token (besides probes, docs and the rate-limited auth endpoints) would escape
    the per-user limit: there are none."""
    public = {r.label for r in api_routes(app) if not r.needs_token}
    expected = {
        "GET /healthz",
        "GET /readyz",
        "POST /api/v1/auth/register",
        "POST /api/v1/auth/token",
        "POST /api/v1/auth/refresh",
        "GET /metrics",
    }
    assert public <= expected, sorted(public - expected)
