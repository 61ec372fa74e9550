"""A credential is never matched by an id that can be issued again (issue 21, finding 1).

Found by an outside attack on SQLite: eve (the highest user id) made a key (the highest key id) and
used it on two processes; an admin deleted eve; frank registered and got eve's user id, and his
first key eve's key id. Eve's deleted key then read frank's private items and wrote new ones as
frank, on both processes: each process remembered the key as (user id, key id, scopes) and the
per-request statement matched only those two integers, which SQLite hands out again once the
highest row is deleted. Now ids are never reused on either database (SQLite AUTOINCREMENT), and the
per-request statement matches the key by its stored hash, so it stands for this very key.
"""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from app.http.state import state_of
from tests.api.conftest import register, serve, user_id
from tests.conftest import Headers, assert_problem, make_settings


async def _key(client: httpx.AsyncClient, owner: Headers) -> tuple[int, Headers]:
    made = await client.post(
        "/api/v1/api-keys", json={"name": "k", "scopes": ["items:read", "items:write"]}, headers=owner
    )
    assert made.status_code == 201, made.text
    return made.json()["id"], {"Authorization": f"Bearer {made.json()['key']}"}


async def test_a_deleted_users_key_never_acts_as_the_next_user(
    client: httpx.AsyncClient, app: FastAPI, admin_headers: Headers, database_url: str
) -> None:
    # A second process on the same database, as the attack used: each process remembers keys.
    async with serve(make_settings(database_url)) as other:
        eve = await register(client, "eve@example.com")
        eve_id = await user_id(client, eve)
        eve_key_id, eve_key = await _key(client, eve)
        for process in (client, other):
            assert (await process.get("/api/v1/items", headers=eve_key)).status_code == 200

        deleted = await client.delete(f"/api/v1/users/{eve_id}", headers=admin_headers)
        assert deleted.status_code == 204

        frank = await register(client, "frank@example.com")
        frank_id = await user_id(client, frank)
        frank_key_id, frank_key = await _key(client, frank)
        # Ids that were issued once are never issued again.
        assert frank_id != eve_id
        assert frank_key_id != eve_key_id
        secret = await client.post("/api/v1/items", json={"title": "frank's secret"}, headers=frank)
        assert secret.status_code == 201

        for process in (client, other):
            assert_problem(await process.get("/api/v1/items", headers=eve_key), 401)
            assert_problem(await process.post("/api/v1/items", json={"title": "x"}, headers=eve_key), 401)
            # Frank's own new key works at once on both (a refused key never blocks another).
            listed = await process.get("/api/v1/items", headers=frank_key)
            assert listed.status_code == 200
            assert [item["title"] for item in listed.json()] == ["frank's secret"]
        async with state_of(app).resources.db.engine.connect() as conn:
            owners = (await conn.execute(text("SELECT owner_id FROM items"))).scalars().all()
        assert owners == [frank_id]


async def test_the_key_check_matches_this_very_key_not_its_ids(
    client: httpx.AsyncClient, app: FastAPI, admin_headers: Headers
) -> None:
    """Even were an id issued again (a restored backup, a hand-made row), a key the process has
    seen is checked against its own stored hash at every request, not against (user id, key id)."""
    owner = await register(client, "ida@example.com")
    key_id, key = await _key(client, owner)
    item = await client.post("/api/v1/items", json={"title": "t"}, headers=key)
    assert item.status_code == 201
    item_url = f"/api/v1/items/{item.json()['id']}"
    assert (await client.get(item_url, headers=key)).status_code == 200
    # The row behind the key now holds another key's hash, under the same ids.
    async with state_of(app).resources.db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE api_keys SET key_hash = :h WHERE id = :id"), {"h": "0" * 64, "id": key_id}
        )
    assert_problem(await client.get("/api/v1/items", headers=key), 401)
    assert_problem(await client.post("/api/v1/items", json={"title": "x"}, headers=key), 401)
    assert_problem(await client.get(item_url, headers=key), 401)  # the one-statement hot path
    assert_problem(await client.patch(item_url, json={"title": "y"}, headers=key), 401)  # the caller
