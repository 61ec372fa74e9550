"""/api/v1/users: the caller's account, password change, and user administration."""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import bearer, login, user_id
from tests.conftest import PASSWORD, Headers, MakeUser, assert_problem

ME = "/api/v1/users/me"
USERS = "/api/v1/users"
PUBLIC_FIELDS = {"id", "email", "is_active", "is_admin", "created_at"}


# --- /users/me ---


async def test_read_me(client: httpx.AsyncClient, user_headers: Headers) -> None:
    response = await client.get(ME, headers=user_headers)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == PUBLIC_FIELDS
    assert body["email"] == "alice@example.com"


async def test_update_my_email(client: httpx.AsyncClient, user_headers: Headers) -> None:
    response = await client.patch(
        ME, json={"email": "Alice.New@Example.com", "current_password": PASSWORD}, headers=user_headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["email"] == "alice.new@example.com"
    assert (await client.get(ME, headers=user_headers)).json()["email"] == "alice.new@example.com"
    await login(client, "alice.new@example.com")
    old = await client.post(
        "/api/v1/auth/token", data={"username": "alice@example.com", "password": PASSWORD}
    )
    assert_problem(old, 401)


async def test_update_my_email_to_a_taken_one_is_409(
    client: httpx.AsyncClient, user_headers: Headers, other_headers: Headers
) -> None:
    response = await client.patch(
        ME, json={"email": "BOB@example.com", "current_password": PASSWORD}, headers=user_headers
    )
    assert_problem(response, 409)
    # Nothing changed, and the session still works after the failed write.
    assert (await client.get(ME, headers=user_headers)).json()["email"] == "alice@example.com"


async def test_update_me_with_only_the_password_changes_nothing(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    response = await client.patch(ME, json={"current_password": PASSWORD}, headers=user_headers)
    assert response.status_code == 200
    assert response.json()["email"] == "alice@example.com"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": None}, "email"),
        ({"email": "nope"}, "email"),
        ({"is_admin": True}, "is_admin"),
        ({"hashed_password": "x"}, "hashed_password"),
    ],
)
async def test_update_me_refuses_bad_and_privileged_fields(
    client: httpx.AsyncClient, user_headers: Headers, body: dict[str, object], field: str
) -> None:
    response = await client.patch(ME, json={"current_password": PASSWORD, **body}, headers=user_headers)
    assert [e["field"] for e in assert_problem(response, 422)["errors"]] == [field]
    assert (await client.get(ME, headers=user_headers)).json()["is_admin"] is False


# Issue 11, finding 4: changing one's email did not ask for the current password (a stolen access
# token alone could move the account to the thief's address), as changing the password does.
@pytest.mark.parametrize("body", [{"email": "mallory@example.com"}, {}])
async def test_update_me_needs_the_current_password(
    client: httpx.AsyncClient, user_headers: Headers, body: dict[str, object]
) -> None:
    response = await client.patch(ME, json=body, headers=user_headers)
    assert [e["field"] for e in assert_problem(response, 422)["errors"]] == ["current_password"]
    assert (await client.get(ME, headers=user_headers)).json()["email"] == "alice@example.com"


async def test_update_me_with_a_wrong_current_password_is_401_and_changes_nothing(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    response = await client.patch(
        ME, json={"email": "mallory@example.com", "current_password": "not my password"}, headers=user_headers
    )
    assert assert_problem(response, 401)["detail"] == "The current password is incorrect."
    assert (await client.get(ME, headers=user_headers)).json()["email"] == "alice@example.com"
    await login(client, "alice@example.com")


# --- /users/me/password ---


async def test_change_password(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    headers = await make_user("carl@example.com")
    other_session = await login(client, "carl@example.com")
    response = await client.post(
        f"{ME}/password",
        json={"current_password": PASSWORD, "new_password": "a brand new secret"},
        headers=headers,
    )
    assert response.status_code == 204, response.text
    old = await client.post("/api/v1/auth/token", data={"username": "carl@example.com", "password": PASSWORD})
    assert_problem(old, 401)
    fresh = await login(client, "carl@example.com", "a brand new secret")
    assert (await client.get(ME, headers=bearer(fresh["access_token"]))).status_code == 200
    # Every earlier login has ended: access and refresh tokens alike.
    assert_problem(await client.get(ME, headers=bearer(other_session["access_token"])), 401)
    assert_problem(await client.get(ME, headers=headers), 401)
    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": other_session["refresh_token"]}
    )
    assert_problem(refreshed, 401)


async def test_change_password_with_a_wrong_current_password_is_401(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    response = await client.post(
        f"{ME}/password",
        json={"current_password": "not my password", "new_password": "a brand new secret"},
        headers=user_headers,
    )
    assert_problem(response, 401)
    await login(client, "alice@example.com")
    assert (await client.get(ME, headers=user_headers)).status_code == 200


async def test_change_password_checks_the_new_password_policy(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    response = await client.post(
        f"{ME}/password", json={"current_password": PASSWORD, "new_password": "short"}, headers=user_headers
    )
    assert [e["field"] for e in assert_problem(response, 422)["errors"]] == ["new_password"]


# --- admin routes ---


async def test_admin_lists_users_paginated(
    client: httpx.AsyncClient, admin_headers: Headers, make_user: MakeUser
) -> None:
    for n in range(4):
        await make_user(f"member{n}@example.com")
    first = await client.get(USERS, params={"limit": 2}, headers=admin_headers)
    assert first.status_code == 200
    assert first.headers["x-total-count"] == "5"
    assert len(first.json()) == 2
    assert all(set(user) == PUBLIC_FIELDS for user in first.json())
    rest = await client.get(USERS, params={"offset": 2, "limit": 100}, headers=admin_headers)
    emails = [u["email"] for u in first.json() + rest.json()]
    assert len(emails) == len(set(emails)) == 5
    assert "admin@example.com" in emails
    assert_problem(await client.get(USERS, params={"limit": 101}, headers=admin_headers), 422)


async def test_admin_reads_any_user_and_a_user_reads_only_themself(
    client: httpx.AsyncClient, admin_headers: Headers, user_headers: Headers, other_headers: Headers
) -> None:
    alice = await user_id(client, user_headers)
    bob = await user_id(client, other_headers)
    by_admin = await client.get(f"{USERS}/{alice}", headers=admin_headers)
    assert by_admin.status_code == 200
    assert by_admin.json()["email"] == "alice@example.com"
    own = await client.get(f"{USERS}/{alice}", headers=user_headers)
    assert own.status_code == 200
    assert set(own.json()) == PUBLIC_FIELDS
    assert_problem(await client.get(f"{USERS}/{bob}", headers=user_headers), 403)
    assert_problem(await client.get(f"{USERS}/999999", headers=admin_headers), 404)
    # A non-admin learns nothing about which ids exist.
    assert_problem(await client.get(f"{USERS}/999999", headers=user_headers), 403)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", USERS, None),
        ("PATCH", f"{USERS}/{{id}}", {"is_admin": True}),
        ("DELETE", f"{USERS}/{{id}}", None),
    ],
)
async def test_non_admins_get_403_on_admin_routes(
    client: httpx.AsyncClient, user_headers: Headers, method: str, path: str, body: object
) -> None:
    me = await user_id(client, user_headers)
    response = await client.request(method, path.format(id=me), json=body, headers=user_headers)
    assert_problem(response, 403)
    assert (await client.get(ME, headers=user_headers)).json()["is_admin"] is False


async def test_admin_patches_a_user(
    client: httpx.AsyncClient, admin_headers: Headers, user_headers: Headers, other_headers: Headers
) -> None:
    alice = await user_id(client, user_headers)
    promoted = await client.patch(f"{USERS}/{alice}", json={"is_admin": True}, headers=admin_headers)
    assert promoted.status_code == 200
    assert promoted.json()["is_admin"] is True
    assert (await client.get(USERS, headers=user_headers)).status_code == 200

    renamed = await client.patch(
        f"{USERS}/{alice}", json={"email": "ALICE2@example.com"}, headers=admin_headers
    )
    assert renamed.json()["email"] == "alice2@example.com"
    taken = await client.patch(f"{USERS}/{alice}", json={"email": "bob@example.com"}, headers=admin_headers)
    assert_problem(taken, 409)
    assert_problem(await client.patch(f"{USERS}/999999", json={"is_admin": True}, headers=admin_headers), 404)


async def test_deactivating_a_user_ends_their_tokens(
    client: httpx.AsyncClient, admin_headers: Headers, user_headers: Headers
) -> None:
    alice = await user_id(client, user_headers)
    pair = await login(client, "alice@example.com")
    response = await client.patch(f"{USERS}/{alice}", json={"is_active": False}, headers=admin_headers)
    assert response.status_code == 200
    assert response.json()["is_active"] is False
    assert_problem(await client.get(ME, headers=user_headers), 401)
    assert_problem(
        await client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}), 401
    )
    assert_problem(
        await client.post("/api/v1/auth/token", data={"username": "alice@example.com", "password": PASSWORD}),
        401,
    )
    # Reactivated, the user logs in again (old sessions stay ended).
    await client.patch(f"{USERS}/{alice}", json={"is_active": True}, headers=admin_headers)
    assert_problem(await client.get(ME, headers=user_headers), 401)
    await login(client, "alice@example.com")


async def test_admin_deletes_a_user_with_their_items_and_tokens(
    client: httpx.AsyncClient, admin_headers: Headers, user_headers: Headers
) -> None:
    alice = await user_id(client, user_headers)
    pair = await login(client, "alice@example.com")
    item = await client.post("/api/v1/items", json={"title": "mine"}, headers=user_headers)
    assert item.status_code == 201
    response = await client.delete(f"{USERS}/{alice}", headers=admin_headers)
    assert response.status_code == 204
    assert_problem(await client.get(ME, headers=user_headers), 401)
    assert_problem(
        await client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}), 401
    )
    assert_problem(await client.get(f"{USERS}/{alice}", headers=admin_headers), 404)
    # Admins read every item: the user's item is gone, not orphaned.
    assert_problem(await client.get(f"/api/v1/items/{item.json()['id']}", headers=admin_headers), 404)
    listed = await client.get("/api/v1/items", headers=admin_headers)
    assert listed.headers["x-total-count"] == "0"
    assert_problem(await client.delete(f"{USERS}/{alice}", headers=admin_headers), 404)
    # The email is free again.
    again = await client.post(
        "/api/v1/auth/register", json={"email": "alice@example.com", "password": PASSWORD}
    )
    assert again.status_code == 201


@pytest.mark.parametrize(
    ("method", "body"),
    [("PATCH", {"is_admin": False}), ("PATCH", {"is_active": False}), ("DELETE", None)],
    ids=["demote", "deactivate", "delete"],
)
async def test_admin_cannot_remove_themself(
    client: httpx.AsyncClient, admin_headers: Headers, method: str, body: object
) -> None:
    me = await user_id(client, admin_headers)
    response = await client.request(method, f"{USERS}/{me}", json=body, headers=admin_headers)
    assert_problem(response, 409)
    still = await client.get(ME, headers=admin_headers)
    assert still.status_code == 200
    assert still.json()["is_admin"] is True
    assert still.json()["is_active"] is True


async def test_admin_may_patch_harmless_fields_of_themself(
    client: httpx.AsyncClient, admin_headers: Headers
) -> None:
    me = await user_id(client, admin_headers)
    response = await client.patch(
        f"{USERS}/{me}",
        json={"is_admin": True, "is_active": True, "email": "root@example.com"},
        headers=admin_headers,
    )
    assert response.status_code == 200
    assert response.json()["email"] == "root@example.com"


@pytest.mark.parametrize("bad_id", ["0", "-1", "abc", str(2**31)])
async def test_user_id_is_validated(client: httpx.AsyncClient, admin_headers: Headers, bad_id: str) -> None:
    body = assert_problem(await client.get(f"{USERS}/{bad_id}", headers=admin_headers), 422)
    assert [e["field"] for e in body["errors"]] == ["user_id"]


@pytest.mark.parametrize(
    "body", [{"is_admin": None}, {"is_active": None}, {"is_admin": "yes please"}, {"owner": 1}]
)
async def test_admin_patch_is_validated(
    client: httpx.AsyncClient, admin_headers: Headers, user_headers: Headers, body: dict[str, object]
) -> None:
    alice = await user_id(client, user_headers)
    assert_problem(await client.patch(f"{USERS}/{alice}", json=body, headers=admin_headers), 422)
