"""Two replicas (two server processes on two ports) sharing one PostgreSQL database and one Redis."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from app.http.limiter import KEY_PREFIX
from tests.conftest import PASSWORD
from tests.faults.server import free_port, private_database, server_env, start_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.database,
    pytest.mark.skipif(
        not (os.environ.get("TEST_DATABASE_URL") and os.environ.get("TEST_REDIS_URL")),
        reason="needs TEST_DATABASE_URL and TEST_REDIS_URL (the PostgreSQL + Redis run of .ci/run)",
    ),
]


@asynccontextmanager
async def two_replicas(
    tmp_path: Path, name: str, **overrides: str
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Replicas A and B (two server processes) on one fresh database and the test Redis, and a
    client on each."""
    async with private_database(tmp_path) as database_url:
        servers = []
        try:
            for replica in ("a", "b"):
                env = server_env(
                    database_url,
                    free_port(),
                    REDIS_URL=os.environ["TEST_REDIS_URL"],
                    RATE_LIMIT_ENABLED="true",
                    **overrides,
                )
                servers.append(start_server(env, tmp_path / f"{name}-{replica}.log"))
            async with (
                httpx.AsyncClient(base_url=servers[0].base_url) as a,
                httpx.AsyncClient(base_url=servers[1].base_url) as b,
            ):
                yield a, b
        finally:
            for server in servers:
                server.stop()


async def test_two_replicas_share_tokens_logout_limits_and_data(tmp_path: Path) -> None:
    async with two_replicas(
        tmp_path,
        "tokens",
        RATE_LIMIT_AUTH_PER_ACCOUNT="3/minute",
        RATE_LIMIT_AUTH_PER_ADDRESS="100/minute",
        RATE_LIMIT_PER_USER="",
    ) as (a, b):
        email = f"replica-{uuid.uuid4().hex[:12]}@example.com"
        assert (
            await a.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        ).status_code == 201
        token = await a.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
        assert token.status_code == 200
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}

        # A token issued by A works on B; an item created on A is read on B.
        assert (await b.get("/api/v1/users/me", headers=headers)).json()["email"] == email
        item = await a.post("/api/v1/items", json={"title": "made on A"}, headers=headers)
        assert item.status_code == 201
        read = await b.get(f"/api/v1/items/{item.json()['id']}", headers=headers)
        assert read.status_code == 200
        assert read.json()["title"] == "made on A"

        # Logout on B; A refuses the token at once.
        assert (await b.post("/api/v1/auth/logout", headers=headers)).status_code == 204
        refused = await a.get("/api/v1/users/me", headers=headers)
        assert refused.status_code == 401

        # The account's log-in limit (3 a minute) spent on A and B together holds on both.
        statuses = [
            (
                await client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
            ).status_code
            for client in (a, b)
        ]
        assert statuses == [200, 200]  # with the first log-in: 3 of 3 spent
        limited = await b.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert (
            await a.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
        ).status_code == 429


async def _forget_key_counters(redis_url: str) -> None:
    """Keys are counted by id, and a fresh database starts ids at 1 again: an earlier run's counts
    (in the same minute, in the same Redis) must not be this run's."""
    client = Redis.from_url(redis_url)
    try:
        async for name in client.scan_iter(match=f"{KEY_PREFIX}*api-key*"):
            await client.delete(name)
    finally:
        await client.aclose()


async def test_a_key_revoked_on_one_replica_is_refused_by_the_other_and_its_limit_is_shared(
    tmp_path: Path,
) -> None:
    await _forget_key_counters(os.environ["TEST_REDIS_URL"])
    async with two_replicas(
        tmp_path, "keys", RATE_LIMIT_PER_API_KEY="6/minute", API_KEY_USAGE_FLUSH_SECONDS="0.2"
    ) as (a, b):
        email = f"keys-{uuid.uuid4().hex[:12]}@example.com"
        await a.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        token = await a.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
        owner = {"Authorization": f"Bearer {token.json()['access_token']}"}
        scopes = {"name": "replicas", "scopes": ["items:read", "items:write"]}
        made = (await a.post("/api/v1/api-keys", json=scopes, headers=owner)).json()
        key = {"Authorization": f"Bearer {made['key']}"}

        # The per-key limit (6 a minute) is counted on A and B together, through Redis.
        statuses = [(await c.get("/api/v1/items", headers=key)).status_code for c in (a, b, a, b, a, b)]
        assert statuses == [200] * 6
        assert (await a.get("/api/v1/items", headers=key)).status_code == 429
        assert (await b.get("/api/v1/items", headers=key)).status_code == 429

        # Both replicas know the key now; revoked on B, A refuses it at its next request.
        second = (await b.post("/api/v1/api-keys", json=scopes, headers=owner)).json()
        fresh = {"Authorization": f"Bearer {second['key']}"}
        assert (await a.post("/api/v1/items", json={"title": "t"}, headers=fresh)).status_code == 201
        assert (await b.get("/api/v1/items", headers=fresh)).status_code == 200
        revoked = await b.delete(f"/api/v1/api-keys/{second['id']}", headers=owner)
        assert revoked.status_code == 204
        for method, path in (
            ("GET", "/api/v1/items"),
            ("POST", "/api/v1/items"),
            ("GET", "/api/v2/items"),
        ):
            refused = await a.request(method, path, json={"title": "t"}, headers=fresh)
            assert refused.status_code == 401, (method, path, refused.text)

        # last_used_at reaches the database from either replica within a flush or two.
        deadline = time.monotonic() + 10
        while True:
            listed = (await a.get("/api/v1/api-keys", headers=owner)).json()
            if all(k["last_used_at"] for k in listed) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert all(k["last_used_at"] is not None for k in listed), listed
