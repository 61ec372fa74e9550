"""Limits around API keys (issue 21, finding 5): a key refused by the database is limited and
remembered whether or not this process had seen it; one user holds a bounded number of live keys
(each has its own rate limit, so this bounds what one user's programs may send); deactivation
ends a user's keys for good, so every process agrees after a re-activation."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

import app.services.api_keys as api_keys_module
from tests.api.conftest import bearer, login, register, serve, user_id
from tests.conftest import Headers, assert_problem, make_settings


async def _make_key(client: httpx.AsyncClient, owner: Headers) -> httpx.Response:
    return await client.post("/api/v1/api-keys", json={"name": "k", "scopes": ["items:read"]}, headers=owner)


def _bearer(made: dict[str, Any]) -> Headers:
    return {"Authorization": f"Bearer {made['key']}"}


async def test_a_key_refused_elsewhere_is_limited_and_costs_one_query(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found: 25 requests with a key revoked on another process got 25 x 401 and no 429, each
    costing a query. Now: the first refusal costs one query, the rest none; 429 past the limit."""
    lookups = 0
    real_by_hash = api_keys_module.by_hash

    async def counting_by_hash(*args: Any) -> Any:
        nonlocal lookups
        lookups += 1
        return await real_by_hash(*args)

    monkeypatch.setattr(api_keys_module, "by_hash", counting_by_hash)
    settings = make_settings(database_url, rate_limit_per_api_key="3/minute")
    async with serve(settings) as first, serve(settings) as second:
        owner = await register(first, "rose@example.com")
        made = (await _make_key(first, owner)).json()
        revoked = await first.delete(f"/api/v1/api-keys/{made['id']}", headers=owner)
        assert revoked.status_code == 204
        lookups = 0
        statuses = [(await second.get("/api/v1/items", headers=_bearer(made))).status_code for _ in range(6)]
        assert statuses == [401, 401, 401, 429, 429, 429]
        assert lookups == 1
        limited = await second.get("/api/v1/items", headers=_bearer(made))
        assert_problem(limited, 429)
        assert int(limited.headers["Retry-After"]) >= 1


async def test_a_user_holds_at_most_the_configured_number_of_live_keys(database_url: str) -> None:
    """Found: with RATE_LIMIT_PER_USER=10/minute, four fresh keys gave 40 of 40 requests 200, and
    there was no cap on keys. Now each user holds at most API_KEYS_PER_USER live keys."""
    settings = make_settings(database_url, api_keys_per_user=3, rate_limit_enabled=False)
    async with serve(settings) as client:
        owner = await register(client, "kim@example.com")
        other = await register(client, "lee@example.com")
        made = [await _make_key(client, owner) for _ in range(3)]
        assert [response.status_code for response in made] == [201, 201, 201]
        refused = await _make_key(client, owner)
        problem = assert_problem(refused, 409)
        assert "3 live API keys" in problem["detail"]
        # Another user is counted apart; a revoked key frees its place.
        assert (await _make_key(client, other)).status_code == 201
        key_id = made[0].json()["id"]
        assert (await client.delete(f"/api/v1/api-keys/{key_id}", headers=owner)).status_code == 204
        assert (await _make_key(client, owner)).status_code == 201
        assert_problem(await _make_key(client, owner), 409)

        # Concurrent requests cannot both take the last place.
        racer = await register(client, "max@example.com")
        answers = await asyncio.gather(*(_make_key(client, racer) for _ in range(8)))
        assert sorted(response.status_code for response in answers) == [201] * 3 + [409] * 5
        listed = (await client.get("/api/v1/api-keys", headers=racer)).json()
        assert len(listed) == 3


async def test_deactivation_ends_keys_for_good_on_every_process(
    database_url: str, admin_headers: Headers, client: httpx.AsyncClient
) -> None:
    """Found: re-activating a user brought their keys back on one process at once and 401 on
    another for 60 s. Now deactivation revokes the keys (as it ends the user's logins): after a
    re-activation every process refuses them, and the owner makes new ones."""
    async with serve(make_settings(database_url)) as other:
        owner = await register(client, "una@example.com")
        made = (await _make_key(client, owner)).json()
        for process in (client, other):
            assert (await process.get("/api/v1/items", headers=_bearer(made))).status_code == 200
        uid = await user_id(client, owner)
        for active in (False, True):
            changed = await client.patch(
                f"/api/v1/users/{uid}", json={"is_active": active}, headers=admin_headers
            )
            assert changed.status_code == 200
            if not active:  # one process sees the refusal while the user is inactive, one does not
                assert_problem(await client.get("/api/v1/items", headers=_bearer(made)), 401)
        for process in (client, other):
            assert_problem(await process.get("/api/v1/items", headers=_bearer(made)), 401)
        owner = await _register_again(client, "una@example.com")
        [listed] = (await client.get("/api/v1/api-keys", headers=owner)).json()
        assert listed["revoked_at"] is not None
        fresh = (await _make_key(client, owner)).json()
        for process in (client, other):
            assert (await process.get("/api/v1/items", headers=_bearer(fresh))).status_code == 200


async def _register_again(client: httpx.AsyncClient, email: str) -> Headers:
    """Log in again (deactivation ended the user's logins)."""
    return bearer((await login(client, email))["access_token"])
