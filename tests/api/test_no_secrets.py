"""Rule 1 of the guide: no password hash in any response, and no secret in any log line; an API
key's secret in one response only, the one that made it."""

from __future__ import annotations

import json

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from app.core.config import Settings
from app.http.state import state_of
from app.main import create_app
from tests.api.conftest import bearer, login, serve, user_id
from tests.conftest import PASSWORD, LogLines, MakeUser

FORBIDDEN_IN_RESPONSES = ("hashed_password", "$argon2")


async def _exercise_every_route(client: httpx.AsyncClient, make_user: MakeUser) -> list[str]:
    """Drive every route of the service core, successes and failures; returns the secrets used."""
    admin = await make_user("root@example.com", admin=True)
    alice = await make_user("alice@example.com")
    alice_id = await user_id(client, alice)
    pair = await login(client, "alice@example.com")
    made = await client.post(
        "/api/v1/api-keys", headers=alice, json={"name": "sweep", "scopes": ["items:read", "predict"]}
    )
    assert made.status_code == 201, made.text
    api_key, key_id = made.json()["key"], made.json()["id"]
    with_key = {"Authorization": f"Bearer {api_key}"}
    tampered = {"Authorization": f"Bearer {api_key[:-1]}{'A' if api_key[-1] != 'A' else 'B'}"}
    secrets = [
        PASSWORD,
        pair["access_token"],
        pair["refresh_token"],
        alice["Authorization"].split()[1],
        api_key,
        api_key[12:],  # the part of a key that is never shown (the prefix is, in lists)
    ]

    item = await client.post("/api/v1/items", headers=alice, json={"title": "t", "description": PASSWORD})
    assert item.status_code == 201, item.text
    item_id = item.json()["id"]

    # Each call with the status it must get: a sweep whose calls failed early (a 401 for a bad
    # token, a 422 for a wrong body) would reach no code worth checking and prove nothing.
    calls: list[tuple[int, str, str, dict[str, object]]] = [
        (
            409,
            "POST",
            "/api/v1/auth/register",
            {"json": {"email": "alice@example.com", "password": PASSWORD}},
        ),
        (422, "POST", "/api/v1/auth/register", {"json": {"email": "x@example.com", "password": "short"}}),
        (
            401,
            "POST",
            "/api/v1/auth/token",
            {"data": {"username": "alice@example.com", "password": "wrong pass"}},
        ),
        (200, "GET", "/api/v1/users/me", {"headers": alice}),
        (
            409,
            "PATCH",
            "/api/v1/users/me",
            {"headers": alice, "json": {"email": "root@example.com", "current_password": PASSWORD}},
        ),
        (422, "PATCH", "/api/v1/users/me", {"headers": alice, "json": {"is_admin": True}}),
        (200, "GET", "/api/v1/users", {"headers": admin}),
        (200, "GET", f"/api/v1/users/{alice_id}", {"headers": admin}),
        (200, "GET", f"/api/v1/users/{alice_id}", {"headers": alice}),
        (200, "PATCH", f"/api/v1/users/{alice_id}", {"headers": admin, "json": {"is_admin": False}}),
        (201, "POST", "/api/v1/items", {"headers": alice, "json": {"title": "t", "description": PASSWORD}}),
        (200, "GET", "/api/v1/items", {"headers": alice}),
        (200, "GET", "/api/v1/items", {"headers": admin}),
        (200, "GET", "/api/v2/items", {"headers": admin}),
        (200, "GET", f"/api/v1/items/{item_id}", {"headers": alice}),
        (200, "PATCH", f"/api/v1/items/{item_id}", {"headers": alice, "json": {"title": "u"}}),
        (204, "DELETE", f"/api/v1/items/{item_id}", {"headers": alice}),
        (200, "GET", "/api/v1/items", {"headers": with_key}),
        (403, "POST", "/api/v1/items", {"headers": with_key, "json": {"title": "t"}}),
        (403, "GET", "/api/v1/api-keys", {"headers": with_key}),
        (401, "GET", "/api/v1/items", {"headers": tampered}),
        (200, "GET", "/api/v1/api-keys", {"headers": alice}),
        (204, "DELETE", f"/api/v1/api-keys/{key_id}", {"headers": alice}),
        (401, "GET", "/api/v1/items", {"headers": with_key}),
        (200, "POST", "/api/v1/auth/refresh", {"json": {"refresh_token": pair["refresh_token"]}}),
        (401, "POST", "/api/v1/auth/refresh", {"json": {"refresh_token": pair["refresh_token"]}}),
        (401, "GET", "/api/v1/users/me", {"headers": {"Authorization": "Bearer garbage"}}),
        (
            401,
            "POST",
            "/api/v1/users/me/password",
            {"headers": alice, "json": {"current_password": "wrong pass", "new_password": PASSWORD + "2"}},
        ),
        (
            204,
            "POST",
            "/api/v1/users/me/password",
            {"headers": alice, "json": {"current_password": PASSWORD, "new_password": PASSWORD + "2"}},
        ),
        (204, "POST", "/api/v1/auth/logout", {"headers": admin}),
        (
            204,
            "DELETE",
            f"/api/v1/users/{alice_id}",
            {"headers": await make_user("root2@example.com", admin=True)},
        ),
        (200, "GET", "/readyz", {}),
        (200, "GET", "/healthz", {}),
        (200, "GET", "/openapi.json", {}),
        (200, "GET", "/metrics", {}),
    ]
    for expected, method, path, kwargs in calls:
        response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == expected, (method, path, response.status_code, response.text[:300])
    return secrets


async def test_no_response_contains_a_password_hash(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    bodies: list[tuple[str, str]] = []

    async def collect(response: httpx.Response) -> None:
        await response.aread()
        bodies.append((str(response.request.url), response.text))

    client.event_hooks["response"].append(collect)
    secrets = await _exercise_every_route(client, make_user)
    assert len(bodies) > 30
    for url, body in bodies:
        for forbidden in FORBIDDEN_IN_RESPONSES:
            assert forbidden not in body, f"{url} returned {forbidden}"
    api_key = secrets[4]
    showing_the_key = [url for url, body in bodies if api_key[12:] in body]
    assert showing_the_key == ["http://testserver/api/v1/api-keys"], showing_the_key  # the POST that made it


async def test_the_sweep_would_see_a_hash(make_user: MakeUser, app: FastAPI) -> None:
    """Control: the hashes are in the database and look like the strings the sweep looks for."""
    await make_user("carl@example.com")
    async with state_of(app).resources.db.engine.connect() as conn:
        stored = await conn.scalar(text("SELECT hashed_password FROM users"))
    assert stored.startswith("$argon2")


async def test_no_log_line_contains_a_secret(
    client: httpx.AsyncClient, make_user: MakeUser, log_lines: LogLines
) -> None:
    secrets = await _exercise_every_route(client, make_user)
    lines = log_lines()
    access = [line for line in lines if line.get("event") == "request"]
    assert len(access) > 25, "the access log was not captured"
    for line in lines:
        rendered = json.dumps(line)
        for secret in (*secrets, "$argon2", "hashed_password"):
            assert secret not in rendered, f"a log line carries a secret: {line.get('event')}"


async def test_an_unexpected_error_shows_no_secret(settings: Settings, log_lines: LogLines) -> None:
    """An exception whose message carries a secret: not in the response; the token not in the log."""
    failing = create_app(settings)

    @failing.post("/leak")
    async def leak(body: dict[str, str]) -> None:
        raise RuntimeError(f"failed for password={body['password']}")

    async with serve(settings, failing) as leaky:
        response = await leaky.post(
            "/leak", json={"password": "hunter2-secret"}, headers=bearer("tok-secret")
        )
    assert response.status_code == 500
    assert "hunter2-secret" not in response.text
    logged = json.dumps(log_lines())
    assert "tok-secret" not in logged
