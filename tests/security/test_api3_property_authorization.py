"""API3:2023 Broken Object Property Level Authorization: mass assignment and excessive exposure.

Writable properties are only the ones a caller may set: `owner_id`, `is_admin`, `id`,
`hashed_password` and the like in a body are refused (422), and nothing changes. No response of
any route carries a password hash.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import PASSWORD, Headers, MakeUser, assert_problem
from tests.security.conftest import api_routes, contains_password_hash

SMUGGLED = {
    "owner_id": 1,
    "user_id": 1,
    "is_admin": True,
    "is_active": False,
    "id": 999,
    "hashed_password": "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
    "created_at": "2000-01-01T00:00:00Z",
}


# Bodies that ignore unknown keys by design, and why that assigns nothing.
IGNORES_UNKNOWN = {
    # The Open Inference Protocol lets clients add implementation-specific keys; the body maps to no
    # stored object (the prediction record's owner is the token's user), so there is nothing to assign.
    "POST /v2/models/{name}/infer",
    "POST /v2/models/{name}/versions/{version}/infer",
    # The repository extension (admins only): tritonclient adds its own `parameters` (`config`,
    # `unload_dependents`); only `version` is read, and nothing of the body is stored as sent.
    "POST /v2/repository/index",
    "POST /v2/repository/models/{name}/load",
    "POST /v2/repository/models/{name}/unload",
}


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


async def test_every_json_request_body_refuses_unknown_properties(app: FastAPI) -> None:
    """The document promises it for every operation (new ones included): additionalProperties false."""
    document = app.openapi()
    open_bodies = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" not in content:
                continue
            schema = _resolve(document, content["application/json"]["schema"])
            label = f"{method.upper()} {path}"
            if schema.get("additionalProperties") is not False and label not in IGNORES_UNKNOWN:
                open_bodies.append(label)
    assert not open_bodies, f"request bodies that accept unknown properties: {open_bodies}"


@pytest.mark.parametrize("field", ["is_admin", "is_active", "id", "hashed_password", "owner_id"])
async def test_registering_with_a_privileged_property_is_refused(
    client: httpx.AsyncClient, admin_headers: Headers, field: str
) -> None:
    email = f"mass-{field.replace('_', '-')}@example.com"
    body = {"email": email, "password": PASSWORD, field: SMUGGLED[field]}
    assert_problem(await client.post("/api/v1/auth/register", json=body), 422)
    users = await client.get("/api/v1/users", headers=admin_headers)
    assert email not in users.text  # no account was created


@pytest.mark.parametrize("field", ["owner_id", "id", "created_at", "user_id"])
async def test_items_refuse_ownership_and_identity_properties(
    client: httpx.AsyncClient, user_headers: Headers, other_headers: Headers, field: str
) -> None:
    other_id = (await client.get("/api/v1/users/me", headers=other_headers)).json()["id"]
    smuggled = other_id if field in ("owner_id", "user_id") else SMUGGLED[field]
    created = await client.post("/api/v1/items", json={"title": "t", field: smuggled}, headers=user_headers)
    assert_problem(created, 422)
    item = (await client.post("/api/v1/items", json={"title": "mine"}, headers=user_headers)).json()
    patched = await client.patch(f"/api/v1/items/{item['id']}", json={field: smuggled}, headers=user_headers)
    assert_problem(patched, 422)
    assert (await client.get(f"/api/v1/items/{item['id']}", headers=user_headers)).json() == item
    assert (await client.get("/api/v1/items", headers=other_headers)).json() == []


@pytest.mark.parametrize("field", ["is_admin", "is_active", "id", "hashed_password", "created_at"])
async def test_a_user_cannot_set_privileged_properties_of_their_own_account(
    client: httpx.AsyncClient, user_headers: Headers, field: str
) -> None:
    before = (await client.get("/api/v1/users/me", headers=user_headers)).json()
    assert_problem(
        await client.patch("/api/v1/users/me", json={field: SMUGGLED[field]}, headers=user_headers), 422
    )
    assert (await client.get("/api/v1/users/me", headers=user_headers)).json() == before


async def test_not_even_an_admin_can_write_a_password_hash_or_an_id(
    client: httpx.AsyncClient, user_headers: Headers, admin_headers: Headers
) -> None:
    user = (await client.get("/api/v1/users/me", headers=user_headers)).json()
    for field in ("hashed_password", "id"):
        response = await client.patch(
            f"/api/v1/users/{user['id']}", json={field: SMUGGLED[field]}, headers=admin_headers
        )
        assert_problem(response, 422)
    # The password still works: the hash was not replaced.
    login = await client.post("/api/v1/auth/token", data={"username": user["email"], "password": PASSWORD})
    assert login.status_code == 200


async def test_no_response_of_any_route_carries_a_password_hash(
    client: httpx.AsyncClient,
    app: FastAPI,
    make_user: MakeUser,
    user_headers: Headers,
    admin_headers: Headers,
) -> None:
    """Every route, called by a user and by an admin with real ids, plus the auth flow itself."""
    item = (await client.post("/api/v1/items", json={"title": "t"}, headers=user_headers)).json()
    user = (await client.get("/api/v1/users/me", headers=user_headers)).json()
    ids = {
        "item_id": item["id"],
        "user_id": user["id"],
        "name": "x",
        "version": "1.0.0",
        "alias": "production",
    }
    seen = []
    email = "sweep@example.com"
    seen.append(await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD}))
    seen.append(
        pair := await client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
    )
    seen.append(
        await client.post("/api/v1/auth/refresh", json={"refresh_token": pair.json()["refresh_token"]})
    )
    seen.append(await client.get("/openapi.json"))
    routes = sorted(api_routes(app), key=lambda r: r.method == "DELETE")  # deletions last
    for route in routes:
        url = route.url(**{p: ids.get(p, 1) for p in route.path_params})
        for headers in (user_headers, admin_headers):
            body = {} if route.has_json_body else None
            seen.append(await client.request(route.method, url, json=body, headers=headers))
    users = await client.get("/api/v1/users", params={"limit": 100}, headers=admin_headers)
    assert len(users.json()) >= 3
    seen.append(users)
    leaks = [f"{r.request.method} {r.request.url.path}" for r in seen if contains_password_hash(r.text)]
    assert not leaks, leaks
    assert len(seen) > 2 * len(routes)
