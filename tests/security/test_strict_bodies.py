"""Issue 21, finding 7: loose request bodies, each decided in the open.

Before the fix, pydantic's lax mode guessed: an alias weight of `"50"` or `true` was read as 50 or
1, `"sticky": "yes"` as true, `expires_in_days: true` as 1 day, an admin's `"is_admin": "yes"` as
true; a NUL (or any control character) in a key's name was stored; and anyone who may read the
models saw which admin last pointed each alias (`changed_by`). Now each is a 422 problem naming the
field, and `changed_by` is in the admins' answers only. (The protocol's bodies at /v2:
tests/serving/test_oip_input_checks.py.)
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.core.config import Settings
from tests.conftest import Headers, assert_problem, make_settings

ALIASES = "/api/v1/models/iris/aliases"


@pytest.fixture
def settings(database_url: str) -> Settings:
    # Models on: the alias routes act on the models the app serves.
    return make_settings(database_url, ml_enabled=True)


def _fields(body: dict[str, Any]) -> set[str]:
    return {e["field"] for e in body["errors"]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"version": "1.0.0", "sticky": "yes"}, "sticky"),
        ({"version": "1.0.0", "sticky": 1}, "sticky"),
        (
            {"split": [{"version": "1.0.0", "weight": "50"}, {"version": "2.0.0", "weight": 50}]},
            "split.0.weight",
        ),
        (
            {"split": [{"version": "1.0.0", "weight": 50}, {"version": "2.0.0", "weight": True}]},
            "split.1.weight",
        ),
    ],
)
async def test_an_alias_body_of_the_wrong_types_is_a_422_naming_the_field(
    client: httpx.AsyncClient, admin_headers: Headers, body: dict[str, Any], field: str
) -> None:
    response = await client.put(f"{ALIASES}/production", json=body, headers=admin_headers)
    assert _fields(assert_problem(response, 422)) == {field}
    # Nothing was pointed.
    listed = await client.get(ALIASES, headers=admin_headers)
    assert [a["name"] for a in listed.json()] == ["default"]


async def test_an_alias_body_of_the_right_types_still_points_it(
    client: httpx.AsyncClient, admin_headers: Headers
) -> None:
    body = {"version": "1.0.0", "sticky": True}
    response = await client.put(f"{ALIASES}/production", json=body, headers=admin_headers)
    assert response.status_code == 200, response.text
    assert response.json()["sticky"] is True


async def test_who_pointed_an_alias_is_shown_to_admins_only(
    client: httpx.AsyncClient, admin_headers: Headers, user_headers: Headers
) -> None:
    admin_id = (await client.get("/api/v1/users/me", headers=admin_headers)).json()["id"]
    pointed = await client.put(f"{ALIASES}/production", json={"version": "1.0.0"}, headers=admin_headers)
    assert pointed.status_code == 200, pointed.text
    assert pointed.json()["changed_by"] == admin_id

    listed = await client.get(ALIASES, headers=user_headers)
    assert listed.status_code == 200, listed.text
    by_name = {a["name"]: a for a in listed.json()}
    assert by_name["production"]["splits"] == [{"version": "1.0.0", "weight": 100}]
    assert by_name["production"]["changed_at"] is not None
    assert all("changed_by" not in alias for alias in listed.json())

    state = await client.get("/api/v1/model-repository", headers=admin_headers)
    assert state.status_code == 200, state.text
    aliases = {a["name"]: a for a in state.json()["aliases"]}
    assert aliases["production"]["changed_by"] == admin_id


@pytest.mark.parametrize("days", [True, "30"])
async def test_a_key_expiry_of_the_wrong_type_is_a_422(
    client: httpx.AsyncClient, user_headers: Headers, days: object
) -> None:
    body = {"name": "nightly", "scopes": ["predict"], "expires_in_days": days}
    response = await client.post("/api/v1/api-keys", json=body, headers=user_headers)
    assert _fields(assert_problem(response, 422)) == {"expires_in_days"}
    assert (await client.get("/api/v1/api-keys", headers=user_headers)).json() == []


@pytest.mark.parametrize(
    "name", ["nightly\x00job", "line\nbreak", "tab\there", "\x1b[31mred", "del\x7f", "c1\x85"]
)
async def test_a_key_name_with_control_characters_is_a_422(
    client: httpx.AsyncClient, user_headers: Headers, name: str
) -> None:
    response = await client.post(
        "/api/v1/api-keys", json={"name": name, "scopes": ["predict"]}, headers=user_headers
    )
    body = assert_problem(response, 422)
    assert _fields(body) == {"name"}
    assert "control characters" in body["errors"][0]["message"]
    assert (await client.get("/api/v1/api-keys", headers=user_headers)).json() == []


async def test_a_key_name_in_any_script_is_kept_as_sent(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    name = "Nächtlicher Lauf — 夜間ジョブ ✓"
    # 30.0 is a whole number too, as JSON Schema's `integer` (the document's type) has it.
    body = {"name": name, "scopes": ["predict"], "expires_in_days": 30.0}
    response = await client.post("/api/v1/api-keys", json=body, headers=user_headers)
    assert response.status_code == 201, response.text
    assert [k["name"] for k in (await client.get("/api/v1/api-keys", headers=user_headers)).json()] == [name]


@pytest.mark.parametrize(("field", "value"), [("is_admin", "yes"), ("is_admin", 1), ("is_active", "false")])
async def test_an_admin_update_of_the_wrong_type_is_a_422_and_changes_nothing(
    client: httpx.AsyncClient, admin_headers: Headers, user_headers: Headers, field: str, value: object
) -> None:
    user = (await client.get("/api/v1/users/me", headers=user_headers)).json()
    response = await client.patch(f"/api/v1/users/{user['id']}", json={field: value}, headers=admin_headers)
    assert _fields(assert_problem(response, 422)) == {field}
    after = (await client.get("/api/v1/users/me", headers=user_headers)).json()
    assert (after["is_admin"], after["is_active"]) == (user["is_admin"], user["is_active"])


@pytest.mark.parametrize("ready", ["true", 1])
async def test_a_repository_index_filter_of_the_wrong_type_is_a_422(
    client: httpx.AsyncClient, admin_headers: Headers, ready: object
) -> None:
    response = await client.post("/v2/repository/index", json={"ready": ready}, headers=admin_headers)
    assert response.status_code == 422, response.text
    assert "ready: " in response.json()["error"]
    assert (
        await client.post("/v2/repository/index", json={"ready": True}, headers=admin_headers)
    ).status_code == 200
