"""First end-to-end walk: register, log in, CRUD an item, another user's item is a 404."""

from __future__ import annotations

import httpx

from tests.conftest import Headers, assert_problem


async def test_item_walkthrough(
    client: httpx.AsyncClient, user_headers: Headers, other_headers: Headers
) -> None:
    created = await client.post(
        "/api/v1/items", json={"title": "first", "description": "d"}, headers=user_headers
    )
    assert created.status_code == 201
    item = created.json()
    listed = await client.get("/api/v1/items", headers=user_headers)
    assert listed.headers["x-total-count"] == "1"
    assert [i["id"] for i in listed.json()] == [item["id"]]
    updated = await client.patch(
        f"/api/v1/items/{item['id']}", json={"title": "renamed"}, headers=user_headers
    )
    assert updated.json()["title"] == "renamed"
    assert_problem(await client.get(f"/api/v1/items/{item['id']}", headers=other_headers), 404)
    assert (await client.delete(f"/api/v1/items/{item['id']}", headers=user_headers)).status_code == 204
    assert_problem(await client.get(f"/api/v1/items/{item['id']}", headers=user_headers), 404)
