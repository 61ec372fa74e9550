"""Two replicas (two server processes on two ports) sharing one PostgreSQL database and one Redis."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import PASSWORD
from tests.faults.server import free_port, private_database, server_env, start_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (os.environ.get("TEST_DATABASE_URL") and os.environ.get("TEST_REDIS_URL")),
        reason="needs TEST_DATABASE_URL and TEST_REDIS_URL (the PostgreSQL + Redis run of .ci/run)",
    ),
]


async def test_two_replicas_share_tokens_logout_limits_and_data(tmp_path: Path) -> None:
    redis_url = os.environ["TEST_REDIS_URL"]
    async with private_database(tmp_path) as database_url:
        servers = []
        try:
            for name in ("a", "b"):
                env = server_env(
                    database_url,
                    free_port(),
                    REDIS_URL=redis_url,
                    RATE_LIMIT_ENABLED="true",
                    RATE_LIMIT_AUTH_PER_ACCOUNT="3/minute",
                    RATE_LIMIT_AUTH_PER_ADDRESS="100/minute",
                    RATE_LIMIT_PER_USER="",
                )
                servers.append(start_server(env, tmp_path / f"{name}.log"))
            async with (
                httpx.AsyncClient(base_url=servers[0].base_url) as a,
                httpx.AsyncClient(base_url=servers[1].base_url) as b,
            ):
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
                        await client.post(
                            "/api/v1/auth/token", data={"username": email, "password": PASSWORD}
                        )
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
        finally:
            for server in servers:
                server.stop()
