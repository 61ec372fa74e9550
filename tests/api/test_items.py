"""/api/v1/items (offset pages) and /api/v2/items (cursor pages): owner-scoped CRUD."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from tests.api.conftest import user_id
from tests.conftest import Headers, assert_problem

V1 = "/api/v1/items"
V2 = "/api/v2/items"
ITEM_FIELDS = {"id", "title", "description", "created_at", "updated_at", "owner_id"}


async def _create(client: httpx.AsyncClient, headers: Headers, title: str, **extra: Any) -> dict[str, Any]:
    response = await client.post(V1, json={"title": title, **extra}, headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _fields(response: httpx.Response) -> list[str]:
    return [error["field"] for error in assert_problem(response, 422)["errors"]]


# --- v1 CRUD ---


async def test_item_crud(client: httpx.AsyncClient, user_headers: Headers) -> None:
    created = await _create(client, user_headers, "first", description="about it")
    assert set(created) == ITEM_FIELDS
    assert created["owner_id"] == await user_id(client, user_headers)
    assert created["description"] == "about it"

    read = await client.get(f"{V1}/{created['id']}", headers=user_headers)
    assert read.status_code == 200
    assert read.json() == created

    updated = await client.patch(f"{V1}/{created['id']}", json={"title": "renamed"}, headers=user_headers)
    assert updated.status_code == 200
    assert updated.json()["title"] == "renamed"
    assert updated.json()["description"] == "about it"  # left out: unchanged
    assert updated.json()["updated_at"] >= created["updated_at"]

    cleared = await client.patch(f"{V1}/{created['id']}", json={"description": None}, headers=user_headers)
    assert cleared.json()["description"] is None
    assert cleared.json()["title"] == "renamed"

    deleted = await client.delete(f"{V1}/{created['id']}", headers=user_headers)
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_problem(await client.get(f"{V1}/{created['id']}", headers=user_headers), 404)
    assert_problem(await client.delete(f"{V1}/{created['id']}", headers=user_headers), 404)


async def test_list_is_paginated_with_a_total(client: httpx.AsyncClient, user_headers: Headers) -> None:
    ids = [(await _create(client, user_headers, f"item {n}"))["id"] for n in range(5)]
    first = await client.get(V1, params={"limit": 2}, headers=user_headers)
    assert first.status_code == 200
    assert first.headers["x-total-count"] == "5"
    assert [i["id"] for i in first.json()] == ids[:2]
    second = await client.get(V1, params={"offset": 2, "limit": 2}, headers=user_headers)
    assert [i["id"] for i in second.json()] == ids[2:4]
    past = await client.get(V1, params={"offset": 10}, headers=user_headers)
    assert past.json() == []
    assert past.headers["x-total-count"] == "5"
    assert (await client.get(V1, params={"limit": 100}, headers=user_headers)).status_code == 200


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 101}, "limit"),
        ({"limit": 0}, "limit"),
        ({"offset": -1}, "offset"),
        ({"limit": "x"}, "limit"),
    ],
)
async def test_list_paging_bounds(
    client: httpx.AsyncClient, user_headers: Headers, params: dict[str, object], field: str
) -> None:
    assert _fields(await client.get(V1, params=params, headers=user_headers)) == [field]


async def test_list_shows_only_the_callers_items(
    client: httpx.AsyncClient, user_headers: Headers, other_headers: Headers
) -> None:
    mine = await _create(client, user_headers, "mine")
    await _create(client, other_headers, "theirs")
    listed = await client.get(V1, headers=user_headers)
    assert [i["id"] for i in listed.json()] == [mine["id"]]
    assert listed.headers["x-total-count"] == "1"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": ""}, "title"),
        ({"title": "t" * 201}, "title"),
        ({}, "title"),
        ({"title": None}, "title"),
        ({"title": "ok", "description": "d" * 5001}, "description"),
        ({"title": "ok", "owner_id": 1}, "owner_id"),
        ({"title": "ok", "id": 7}, "id"),
        ({"title": 5}, "title"),
    ],
)
async def test_create_is_validated(
    client: httpx.AsyncClient, user_headers: Headers, body: dict[str, object], field: str
) -> None:
    assert _fields(await client.post(V1, json=body, headers=user_headers)) == [field]
    assert (await client.get(V1, headers=user_headers)).headers["x-total-count"] == "0"


async def test_create_accepts_the_length_bounds(client: httpx.AsyncClient, user_headers: Headers) -> None:
    item = await _create(client, user_headers, "t" * 200, description="d" * 5000)
    assert len(item["title"]) == 200
    assert len(item["description"]) == 5000
    assert (await _create(client, user_headers, "x"))["description"] is None


async def test_owner_comes_from_the_token_never_the_body(
    client: httpx.AsyncClient, user_headers: Headers, other_headers: Headers
) -> None:
    bob = await user_id(client, other_headers)
    response = await client.post(V1, json={"title": "sneaky", "owner_id": bob}, headers=user_headers)
    assert_problem(response, 422)
    item = await _create(client, user_headers, "mine")
    moved = await client.patch(f"{V1}/{item['id']}", json={"owner_id": bob}, headers=user_headers)
    assert _fields(moved) == ["owner_id"]
    assert (await client.get(V1, headers=other_headers)).json() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": None}, "title"),
        ({"title": ""}, "title"),
        ({"title": "t" * 201}, "title"),
        ({"description": "d" * 5001}, "description"),
        ({"id": 99}, "id"),
    ],
)
async def test_update_is_validated(
    client: httpx.AsyncClient, user_headers: Headers, body: dict[str, object], field: str
) -> None:
    item = await _create(client, user_headers, "keep me")
    assert _fields(await client.patch(f"{V1}/{item['id']}", json=body, headers=user_headers)) == [field]
    assert (await client.get(f"{V1}/{item['id']}", headers=user_headers)).json()["title"] == "keep me"


@pytest.mark.parametrize("bad_id", ["0", "-3", "abc", str(2**31), "1.5"])
async def test_item_id_is_validated(client: httpx.AsyncClient, user_headers: Headers, bad_id: str) -> None:
    assert _fields(await client.get(f"{V1}/{bad_id}", headers=user_headers)) == ["item_id"]


@pytest.mark.parametrize(
    ("method", "body"), [("GET", None), ("PATCH", {"title": "mine now"}), ("DELETE", None)]
)
async def test_another_users_item_is_a_404_like_a_missing_one(
    client: httpx.AsyncClient, user_headers: Headers, other_headers: Headers, method: str, body: object
) -> None:
    theirs = await _create(client, other_headers, "bob's")
    missing_id = theirs["id"] + 1000
    foreign = await client.request(method, f"{V1}/{theirs['id']}", json=body, headers=user_headers)
    missing = await client.request(method, f"{V1}/{missing_id}", json=body, headers=user_headers)
    foreign_body = assert_problem(foreign, 404)
    missing_body = assert_problem(missing, 404)
    assert foreign_body.pop("instance") == f"{V1}/{theirs['id']}"
    assert missing_body.pop("instance") == f"{V1}/{missing_id}"
    assert foreign_body == missing_body
    # And nothing happened to it.
    still = await client.get(f"{V1}/{theirs['id']}", headers=other_headers)
    assert still.json() == theirs


async def test_admins_read_every_item_but_change_only_their_own(
    client: httpx.AsyncClient, admin_headers: Headers, user_headers: Headers
) -> None:
    theirs = await _create(client, user_headers, "alice's")
    own = await _create(client, admin_headers, "admin's")
    assert (await client.get(f"{V1}/{theirs['id']}", headers=admin_headers)).json() == theirs
    listed = await client.get(V1, headers=admin_headers)
    assert {i["id"] for i in listed.json()} == {theirs["id"], own["id"]}
    assert listed.headers["x-total-count"] == "2"
    page = (await client.get(V2, headers=admin_headers)).json()
    assert {i["id"] for i in page["items"]} == {theirs["id"], own["id"]}

    assert_problem(
        await client.patch(f"{V1}/{theirs['id']}", json={"title": "x"}, headers=admin_headers), 404
    )
    assert_problem(await client.delete(f"{V1}/{theirs['id']}", headers=admin_headers), 404)
    assert (await client.get(f"{V1}/{theirs['id']}", headers=user_headers)).json() == theirs
    assert (
        await client.patch(f"{V1}/{own['id']}", json={"title": "x"}, headers=admin_headers)
    ).status_code == 200


@pytest.mark.parametrize("path", [V1, f"{V1}/1", V2])
async def test_items_need_a_token(client: httpx.AsyncClient, path: str) -> None:
    assert_problem(await client.get(path), 401)


# --- v2 cursor pages ---


async def _walk(
    client: httpx.AsyncClient, headers: Headers, limit: int, during: Any = None
) -> tuple[list[int], int]:
    """Every id of every page, in order, and the number of pages."""
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get(V2, params=params, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"items", "next_cursor"}
        assert len(body["items"]) <= limit
        pages += 1
        seen.extend(item["id"] for item in body["items"])
        if during is not None:
            await during(pages)
        cursor = body["next_cursor"]
        if cursor is None:
            return seen, pages
        assert pages < 100, "the cursor never ended"


async def test_cursor_pages_walk_every_item_once(
    client: httpx.AsyncClient, user_headers: Headers, other_headers: Headers
) -> None:
    ids = [(await _create(client, user_headers, f"item {n}"))["id"] for n in range(7)]
    await _create(client, other_headers, "not alice's")
    seen, pages = await _walk(client, user_headers, limit=3)
    assert seen == ids
    assert pages == 3
    # An exact multiple of the page size ends without an empty extra page.
    exact, exact_pages = await _walk(client, user_headers, limit=7)
    assert exact == ids
    assert exact_pages == 1


async def test_cursor_page_items_are_full_items(client: httpx.AsyncClient, user_headers: Headers) -> None:
    created = await _create(client, user_headers, "one", description="d")
    body = (await client.get(V2, headers=user_headers)).json()
    assert body == {"items": [created], "next_cursor": None}


async def test_cursor_pages_are_stable_while_items_are_inserted(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    existing = [(await _create(client, user_headers, f"old {n}"))["id"] for n in range(6)]
    added: list[int] = []

    async def insert(_page: int) -> None:
        added.append((await _create(client, user_headers, f"new {len(added)}"))["id"])

    seen, _ = await _walk(client, user_headers, limit=2, during=insert)
    assert len(seen) == len(set(seen)), "an item came twice"
    assert seen[: len(existing)] == existing, "an item that existed at the start was skipped"
    assert set(seen) <= set(existing) | set(added)
    assert seen == sorted(seen)


async def test_a_cursor_page_does_not_shift_when_an_earlier_item_is_deleted(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    """With offsets, deleting an item of page 1 would skip one on page 2; the cursor skips none."""
    ids = [(await _create(client, user_headers, f"item {n}"))["id"] for n in range(4)]
    first = await client.get(V2, params={"limit": 2}, headers=user_headers)
    await client.delete(f"{V1}/{ids[0]}", headers=user_headers)
    second = await client.get(
        V2, params={"limit": 2, "cursor": first.json()["next_cursor"]}, headers=user_headers
    )
    assert [i["id"] for i in second.json()["items"]] == ids[2:4]


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    # Every kind of bad cursor is in tests/unit/test_cursor.py; here, that each reaches the client as a 422.
    ["not-a-cursor!", _b64("x:5"), _b64("i:" + str(2**63)), "x" * 65],
)
async def test_invalid_cursor_is_a_422_naming_cursor(
    client: httpx.AsyncClient, user_headers: Headers, cursor: str
) -> None:
    await _create(client, user_headers, "one")
    response = await client.get(V2, params={"cursor": cursor}, headers=user_headers)
    assert _fields(response) == ["cursor"]


@pytest.mark.parametrize(("limit", "status"), [(0, 422), (101, 422), (100, 200), (1, 200)])
async def test_cursor_page_limit_bounds(
    client: httpx.AsyncClient, user_headers: Headers, limit: int, status: int
) -> None:
    response = await client.get(V2, params={"limit": limit}, headers=user_headers)
    assert response.status_code == status
    if status == 422:
        assert _fields(response) == ["limit"]
