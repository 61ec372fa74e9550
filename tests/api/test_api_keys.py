"""API keys: made, listed and revoked by their owner (or an admin), used by programs with scopes,
expiry, their own rate limit, and `last_used_at` kept without a write per request."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.http.state import state_of
from tests.api.conftest import serve, user_id
from tests.conftest import PASSWORD, Headers, LogLines, MakeUser, assert_problem, make_settings

KEY_RE = re.compile(r"mlk_[A-Za-z0-9_-]{40}")


async def make_key(
    client: httpx.AsyncClient, headers: Headers, scopes: list[str], **extra: Any
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/api-keys", json={"name": "a program", "scopes": scopes, **extra}, headers=headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def register(client: httpx.AsyncClient, email: str) -> Headers:
    await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    token = await client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def key_headers(made: dict[str, Any]) -> Headers:
    return {"Authorization": f"Bearer {made['key']}"}


async def test_a_key_is_shown_once_listed_without_its_secret_and_revoked(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    made = await make_key(client, user_headers, ["items:read", "items:write"], expires_in_days=30)
    assert KEY_RE.fullmatch(made["key"]), made["key"]  # 192 random bits, a recognisable prefix
    assert made["prefix"] == made["key"][:12]
    assert made["scopes"] == ["items:read", "items:write"]
    assert made["last_used_at"] is None
    assert made["revoked_at"] is None
    assert made["expires_at"] is not None

    listed = await client.get("/api/v1/api-keys", headers=user_headers)
    assert listed.status_code == 200
    [shown] = listed.json()
    assert "key" not in shown
    assert made["key"][12:] not in listed.text
    assert shown == {name: value for name, value in made.items() if name != "key"}

    created = await client.post("/api/v1/items", json={"title": "by a program"}, headers=key_headers(made))
    assert created.status_code == 201, created.text

    revoked = await client.delete(f"/api/v1/api-keys/{made['id']}", headers=user_headers)
    assert revoked.status_code == 204
    for method, path in (("GET", "/api/v1/items"), ("GET", f"/api/v1/items/{created.json()['id']}")):
        refused = await client.request(method, path, headers=key_headers(made))
        assert_problem(refused, 401)
        assert refused.json()["detail"] == "The API key is invalid, expired or revoked."
    again = await client.get("/api/v1/api-keys", headers=user_headers)
    assert again.json()[0]["revoked_at"] is not None
    # Revoking twice changes nothing; another user's (or no) key is a 404.
    assert (await client.delete(f"/api/v1/api-keys/{made['id']}", headers=user_headers)).status_code == 204
    assert_problem(await client.delete("/api/v1/api-keys/999999", headers=user_headers), 404)


async def test_the_access_log_names_the_key_by_id_never_by_secret(
    client: httpx.AsyncClient, user_headers: Headers, log_lines: LogLines
) -> None:
    made = await make_key(client, user_headers, ["items:read"])
    key = key_headers(made)
    assert (await client.get("/api/v1/items", headers=key)).status_code == 200
    assert_problem(await client.post("/api/v1/items", json={"title": "t"}, headers=key), 403)
    assert (await client.get("/api/v1/items", headers=user_headers)).status_code == 200
    lines = log_lines()  # read once: each call returns what was logged since the last
    access = [line for line in lines if line.get("event") == "request" and line["route"] == "/api/v1/items"]
    seen = [(line["method"], line["status"], line.get("api_key_id")) for line in access]
    assert seen == [("GET", 200, made["id"]), ("POST", 403, made["id"]), ("GET", 200, None)]
    assert made["key"][12:] not in json.dumps(lines)


async def test_every_route_a_scope_opens_takes_a_key(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    made = await make_key(client, user_headers, ["items:read", "items:write", "predictions:read"])
    key = key_headers(made)
    item = await client.post("/api/v1/items", json={"title": "t"}, headers=key)
    assert item.status_code == 201
    item_id = item.json()["id"]
    for method, path, kwargs, status in (
        ("GET", "/api/v1/items", {}, 200),
        ("GET", f"/api/v1/items/{item_id}", {}, 200),
        ("GET", "/api/v2/items", {}, 200),
        ("PATCH", f"/api/v1/items/{item_id}", {"json": {"title": "u"}}, 200),
        ("GET", "/api/v1/predictions", {}, 200),
        ("DELETE", f"/api/v1/items/{item_id}", {}, 204),
    ):
        response = await client.request(method, path, headers=key, **kwargs)
        assert response.status_code == status, (method, path, response.text)
    # The key acts as its owner: what it made is theirs.
    mine = await client.get("/api/v1/items", headers=user_headers)
    assert mine.headers["X-Total-Count"] == "0"


async def test_a_request_outside_the_keys_scopes_is_403_naming_the_scope(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    key = key_headers(await make_key(client, user_headers, ["items:read"]))
    for method, path, scope in (
        ("POST", "/api/v1/items", "items:write"),
        ("GET", "/api/v1/predictions", "predictions:read"),
        ("GET", "/api/v1/users", "admin"),
    ):
        refused = await client.request(method, path, headers=key, json={"title": "t"})
        body = assert_problem(refused, 403)
        assert body["type"].endswith("/insufficient-scope")
        assert f"`{scope}`" in body["detail"]
        assert refused.headers["WWW-Authenticate"] == f'Bearer error="insufficient_scope", scope="{scope}"'
    nothing = await client.get("/api/v1/items", headers=user_headers)
    assert nothing.headers["X-Total-Count"] == "0"  # the refused POST wrote nothing


async def test_a_key_cannot_manage_the_account_or_make_keys(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    everything = ["predict", "models:read", "items:read", "items:write", "predictions:read"]
    key = key_headers(await make_key(client, user_headers, everything))
    me = await user_id(client, user_headers)
    for method, path, body in (
        ("POST", "/api/v1/api-keys", {"name": "child", "scopes": ["items:read"]}),
        ("GET", "/api/v1/api-keys", None),
        ("DELETE", "/api/v1/api-keys/1", None),
        ("GET", "/api/v1/users/me", None),
        ("PATCH", "/api/v1/users/me", {"email": "new@example.com", "current_password": "x" * 8}),
        ("POST", "/api/v1/users/me/password", {"current_password": "x" * 8, "new_password": "y" * 8}),
        ("POST", "/api/v1/auth/logout", None),
        ("GET", f"/api/v1/users/{me}", None),
    ):
        refused = await client.request(method, path, headers=key, json=body)
        problem = assert_problem(refused, 403)
        assert "API keys cannot do this" in problem["detail"], (method, path)
    assert len((await client.get("/api/v1/api-keys", headers=user_headers)).json()) == 1


async def test_the_admin_scope_is_for_admins_and_needed_by_their_keys(
    client: httpx.AsyncClient, user_headers: Headers, admin_headers: Headers
) -> None:
    refused = await client.post(
        "/api/v1/api-keys", json={"name": "x", "scopes": ["admin"]}, headers=user_headers
    )
    assert "`admin` scope" in assert_problem(refused, 403)["detail"]
    admin_key = key_headers(await make_key(client, admin_headers, ["admin"]))
    plain_admin_key = key_headers(await make_key(client, admin_headers, ["items:read"]))
    assert (await client.get("/api/v1/users", headers=admin_key)).status_code == 200
    assert_problem(await client.get("/api/v1/users", headers=plain_admin_key), 403)
    # An admin's key with `admin` manages other users' keys; a user's key never reaches them.
    victim = await user_id(client, user_headers)
    theirs = await make_key(client, user_headers, ["items:read"])
    listed = await client.get(f"/api/v1/users/{victim}/api-keys", headers=admin_key)
    assert [k["id"] for k in listed.json()] == [theirs["id"]]
    assert theirs["key"][12:] not in listed.text
    assert_problem(await client.get("/api/v1/users/999999/api-keys", headers=admin_headers), 404)
    gone = await client.delete(f"/api/v1/users/{victim}/api-keys/{theirs['id']}", headers=admin_key)
    assert gone.status_code == 204
    assert_problem(await client.get("/api/v1/items", headers=key_headers(theirs)), 401)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "scopes": ["items:delete"]}, "scopes.0"),
        ({"name": "x", "scopes": ["items:read", "items:read"]}, "scopes"),
        ({"name": "", "scopes": ["items:read"]}, "name"),
        ({"name": "x", "scopes": ["items:read"], "expires_in_days": 0}, "expires_in_days"),
        ({"name": "x", "scopes": ["items:read"], "expires_in_days": 3651}, "expires_in_days"),
        ({"name": "x", "scopes": ["items:read"], "user_id": 1}, "user_id"),
    ],
)
async def test_a_bad_key_request_is_422_naming_the_field(
    client: httpx.AsyncClient, user_headers: Headers, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/v1/api-keys", json=body, headers=user_headers)
    problem = assert_problem(response, 422)
    assert field in [error["field"] for error in problem["errors"]], problem


async def _set_expiry(app: FastAPI, key_id: int, seconds_from_now: float) -> None:
    async with state_of(app).resources.db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE api_keys SET expires_at = :at WHERE id = :id"),
            {"at": _utc(seconds_from_now), "id": key_id},
        )


def _utc(seconds_from_now: float) -> Any:

    return datetime.now(UTC) + timedelta(seconds=seconds_from_now)


async def test_an_expired_key_is_refused_whether_or_not_this_process_knows_it(
    client: httpx.AsyncClient, app: FastAPI, user_headers: Headers
) -> None:
    used = await make_key(client, user_headers, ["items:read"], expires_in_days=1)
    assert (await client.get("/api/v1/items", headers=key_headers(used))).status_code == 200
    unused = await make_key(client, user_headers, ["items:read"], expires_in_days=1)
    for made in (used, unused):
        await _set_expiry(app, made["id"], -1)
        assert_problem(await client.get("/api/v1/items", headers=key_headers(made)), 401)
        # Refused once, the key is refused from then on (without a query), before its scopes.
        created = await client.post("/api/v1/items", json={"title": "t"}, headers=key_headers(made))
        assert_problem(created, 401)


async def test_the_owners_deactivation_or_deletion_ends_their_keys(
    client: httpx.AsyncClient, make_user: MakeUser, admin_headers: Headers
) -> None:
    for action in ("deactivate", "delete"):
        owner = await make_user()
        made = await make_key(client, owner, ["items:read", "items:write"])
        assert (await client.get("/api/v1/items", headers=key_headers(made))).status_code == 200
        uid = await user_id(client, owner)
        if action == "deactivate":
            changed = await client.patch(
                f"/api/v1/users/{uid}", json={"is_active": False}, headers=admin_headers
            )
            assert changed.status_code == 200
        else:
            assert (await client.delete(f"/api/v1/users/{uid}", headers=admin_headers)).status_code == 204
        for method, path in (("GET", "/api/v1/items"), ("POST", "/api/v1/items"), ("GET", "/api/v2/items")):
            refused = await client.request(method, path, headers=key_headers(made), json={"title": "t"})
            assert_problem(refused, 401)


async def test_last_used_at_is_written_in_batches_not_per_request(database_url: str) -> None:
    settings = make_settings(database_url, api_key_usage_flush_seconds=0.2, rate_limit_enabled=False)
    async with serve(settings) as client:
        await client.post("/api/v1/auth/register", json={"email": "u@example.com", "password": "p" * 12})
        token = await client.post(
            "/api/v1/auth/token", data={"username": "u@example.com", "password": "p" * 12}
        )
        owner = {"Authorization": f"Bearer {token.json()['access_token']}"}
        made = await make_key(client, owner, ["items:read"])
        before = time.time()
        for _ in range(5):
            assert (await client.get("/api/v1/items", headers=key_headers(made))).status_code == 200
        deadline = time.monotonic() + 10
        while True:
            [shown] = (await client.get("/api/v1/api-keys", headers=owner)).json()
            if shown["last_used_at"] is not None or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert shown["last_used_at"] is not None
        from datetime import datetime

        assert datetime.fromisoformat(shown["last_used_at"]).timestamp() >= before - 1


async def test_a_key_has_its_own_rate_limit(database_url: str) -> None:
    settings = make_settings(
        database_url, rate_limit_per_api_key="3/minute", rate_limit_per_user="100/minute"
    )
    async with serve(settings) as client:
        await client.post("/api/v1/auth/register", json={"email": "r@example.com", "password": "p" * 12})
        token = await client.post(
            "/api/v1/auth/token", data={"username": "r@example.com", "password": "p" * 12}
        )
        owner = {"Authorization": f"Bearer {token.json()['access_token']}"}
        first = key_headers(await make_key(client, owner, ["items:read"]))
        second = key_headers(await make_key(client, owner, ["items:read"]))
        statuses = [(await client.get("/api/v1/items", headers=first)).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = await client.get("/api/v1/items", headers=first)
        problem = assert_problem(limited, 429)
        assert "this API key" in problem["detail"]
        assert int(limited.headers["Retry-After"]) >= 1
        # Another key of the same user, and the user's own session, are counted apart.
        assert (await client.get("/api/v1/items", headers=second)).status_code == 200
        assert (await client.get("/api/v1/items", headers=owner)).status_code == 200


async def test_predictions_and_the_inference_protocol_take_a_key_with_predict(database_url: str) -> None:
    settings = make_settings(database_url, ml_enabled=True, rate_limit_enabled=False)
    async with serve(settings) as client:
        await client.post("/api/v1/auth/register", json={"email": "m@example.com", "password": "p" * 12})
        token = await client.post(
            "/api/v1/auth/token", data={"username": "m@example.com", "password": "p" * 12}
        )
        owner = {"Authorization": f"Bearer {token.json()['access_token']}"}
        predictor = key_headers(await make_key(client, owner, ["predict", "models:read"]))
        reader = key_headers(await make_key(client, owner, ["models:read"]))
        row = {"features": [5.1, 3.5, 1.4, 0.2]}
        assert (await client.post("/api/v1/predict", json=row, headers=predictor)).status_code == 200
        assert (await client.get("/api/v1/models", headers=reader)).status_code == 200
        assert (await client.get("/v2/models/iris", headers=reader)).status_code == 200
        infer = {
            "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]
        }
        assert (await client.post("/v2/models/iris/infer", json=infer, headers=predictor)).status_code == 200
        refused = await client.post("/v2/models/iris/infer", json=infer, headers=reader)
        assert refused.status_code == 403
        assert "predict" in refused.json()["error"]  # the protocol's own error shape under /v2
        assert_problem(await client.post("/api/v1/predict", json=row, headers=reader), 403)


async def test_the_openapi_document_offers_keys_where_their_scopes_apply(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    scheme = document["components"]["securitySchemes"]["APIKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    paths = document["paths"]

    def security(path: str, method: str) -> list[dict[str, list[str]]]:
        result: list[dict[str, list[str]]] = paths[path][method]["security"]
        return result

    assert security("/api/v1/items", "get") == [{"OAuth2PasswordBearer": []}, {"APIKey": ["items:read"]}]
    assert security("/api/v1/items", "post") == [{"OAuth2PasswordBearer": []}, {"APIKey": ["items:write"]}]
    assert security("/api/v1/users", "get") == [{"OAuth2PasswordBearer": []}, {"APIKey": ["admin"]}]
    for path, method in (
        ("/api/v1/api-keys", "post"),
        ("/api/v1/users/me", "get"),
        ("/api/v1/auth/logout", "post"),
    ):
        assert security(path, method) == [{"OAuth2PasswordBearer": []}], path
