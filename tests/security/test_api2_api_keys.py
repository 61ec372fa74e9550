"""API2:2023 Broken Authentication, for API keys: a wrong, forged, tampered, revoked or expired key,
or one whose owner was deactivated or deleted, is refused (401) on every route a key may call, and
writes nothing; a key outside its scopes is a 403; another user's key reaches only that user's
objects. The routes are read from the app, so a new route that takes keys is covered."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.core.security import API_KEY_PREFIX, Scope
from app.http.state import state_of
from tests.conftest import Headers, MakeUser, assert_problem
from tests.security.conftest import SOME_PREDICTION_ID, RouteInfo, api_routes

VALID_BODIES: dict[str, dict[str, Any]] = {
    "POST /api/v1/items": {"title": "written with a bad key"},
    "PATCH /api/v1/items/{item_id}": {"title": "written with a bad key"},
}


def _key_routes(app: FastAPI) -> list[tuple[RouteInfo, list[str]]]:
    """Every operation a key may call, with the scopes it needs (from the OpenAPI document)."""
    document = app.openapi()
    return [
        (route, requirement["APIKey"])
        for route in api_routes(app)
        for requirement in document["paths"][route.path][route.method.lower()].get("security", [])
        if "APIKey" in requirement
    ]


async def _key(client: httpx.AsyncClient, owner: Headers, scopes: list[str]) -> dict[str, Any]:
    made = await client.post("/api/v1/api-keys", json={"name": "k", "scopes": scopes}, headers=owner)
    assert made.status_code == 201, made.text
    body: dict[str, Any] = made.json()
    return body


def _bearer(key: str) -> Headers:
    return {"Authorization": f"Bearer {key}"}


def _flip(char: str) -> str:
    return "A" if char != "A" else "B"


async def _expire(app: FastAPI, key_id: int) -> None:
    async with state_of(app).resources.db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE api_keys SET expires_at = :at WHERE id = :id"),
            {"at": datetime.now(UTC) - timedelta(seconds=1), "id": key_id},
        )


def _assert_refused(route: RouteInfo, response: httpx.Response, status: int) -> None:
    assert response.status_code == status, f"{route.label}: {response.status_code} {response.text}"
    if route.path.startswith("/v2"):  # the Open Inference Protocol's own error shape
        assert "error" in response.json()
    else:
        assert_problem(response, status)


@pytest.mark.parametrize(
    "case",
    ["wrong", "forged", "tampered-prefix", "tampered-secret", "revoked", "expired", "deactivated", "deleted"],
)
async def test_every_key_route_refuses_a_bad_key(
    app: FastAPI, client: httpx.AsyncClient, make_user: MakeUser, admin_headers: Headers, case: str
) -> None:
    routes = _key_routes(app)
    assert {"GET /api/v1/items", "POST /v2/models/{name}/infer", "GET /api/v1/users"} <= {
        route.label for route, _ in routes
    }
    # An admin's key with every scope: no route refuses it for a scope, only for what `case` did.
    owner = await make_user(admin=True)
    owner_id = (await client.get("/api/v1/users/me", headers=owner)).json()["id"]
    item_id = (await client.post("/api/v1/items", json={"title": "before"}, headers=owner)).json()["id"]
    made = await _key(client, owner, list(Scope))
    good = made["key"]
    assert (await client.get("/api/v1/items", headers=_bearer(good))).status_code == 200  # control
    body = good[len(API_KEY_PREFIX) :]
    key = {
        "wrong": API_KEY_PREFIX + secrets.token_urlsafe(30)[:40],
        "forged": API_KEY_PREFIX + body[:32] + "AAAAAAAA",  # a tag this service did not make
        "tampered-prefix": "mlx_" + body,
        "tampered-secret": API_KEY_PREFIX + _flip(body[0]) + body[1:],
    }.get(case, good)
    if case == "revoked":
        assert (await client.delete(f"/api/v1/api-keys/{made['id']}", headers=owner)).status_code == 204
    elif case == "expired":
        await _expire(app, made["id"])
    elif case == "deactivated":
        patched = await client.patch(
            f"/api/v1/users/{owner_id}", json={"is_active": False}, headers=admin_headers
        )
        assert patched.status_code == 200
    elif case == "deleted":
        assert (await client.delete(f"/api/v1/users/{owner_id}", headers=admin_headers)).status_code == 204
    for route, _scopes in routes:
        json = VALID_BODIES.get(route.label, {}) if route.has_json_body else None
        url = route.url(
            item_id=item_id,
            user_id=owner_id,
            key_id=made["id"],
            job_id=1,
            prediction_id=SOME_PREDICTION_ID,
            name="iris",
            version="1.0.0",
            alias="production",
        )
        response = await client.request(route.method, url, json=json, headers=_bearer(key))
        _assert_refused(route, response, 401)
        assert good[12:] not in response.text
    listed = await client.get("/api/v1/items", params={"limit": 100}, headers=admin_headers)
    assert all(item["title"] != "written with a bad key" for item in listed.json())


async def test_every_key_route_refuses_a_key_without_its_scope(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: Headers
) -> None:
    """Each route, called by a key holding every scope but the one it needs (an admin's, so the
    admin scope is tried too): 403 naming that scope."""
    admin_id = (await client.get("/api/v1/users/me", headers=admin_headers)).json()["id"]
    item_id = (await client.post("/api/v1/items", json={"title": "x"}, headers=admin_headers)).json()["id"]
    keys: dict[str, str] = {}
    for scope in Scope:
        keys[scope] = (await _key(client, admin_headers, [s for s in Scope if s != scope]))["key"]
    for route, scopes in _key_routes(app):
        json = VALID_BODIES.get(route.label, {}) if route.has_json_body else None
        url = route.url(
            item_id=item_id,
            user_id=admin_id,
            key_id=1,
            job_id=1,
            prediction_id=SOME_PREDICTION_ID,
            name="iris",
            version="1.0.0",
            alias="production",
        )
        for scope in scopes:
            response = await client.request(route.method, url, json=json, headers=_bearer(keys[scope]))
            _assert_refused(route, response, 403)
            assert scope in response.text
            assert (
                response.headers["WWW-Authenticate"] == f'Bearer error="insufficient_scope", scope="{scope}"'
            )
    survived = await client.get(f"/api/v1/items/{item_id}", headers=admin_headers)
    assert survived.json()["title"] == "x"


async def test_another_users_key_reaches_only_that_users_objects(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    owner, attacker = await make_user(), await make_user()
    item = (await client.post("/api/v1/items", json={"title": "private"}, headers=owner)).json()
    theirs = _bearer((await _key(client, attacker, ["items:read", "items:write"]))["key"])
    for method, json in (("GET", None), ("PATCH", {"title": "mine now"}), ("DELETE", None)):
        refused = await client.request(method, f"/api/v1/items/{item['id']}", json=json, headers=theirs)
        assert_problem(refused, 404)
    listed = await client.get("/api/v1/items", headers=theirs)
    assert "private" not in listed.text
    still = await client.get(f"/api/v1/items/{item['id']}", headers=owner)
    assert still.json() == item
