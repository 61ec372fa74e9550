"""The database goes away while traffic flows, then comes back.

A real server process reaches PostgreSQL through a TCP proxy run by this test. Cutting the proxy
(connections dropped and refused), then black-holing it (connections accepted, never answered):
every request fails fast with 503 problem details, none waits past the pool timeout, /readyz
turns 503 and /healthz stays 200. Restoring it: the same process serves again by itself.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import PASSWORD
from tests.faults.server import TcpProxy, free_port, private_database, server_env, start_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.database,
    pytest.mark.skipif(
        not os.environ.get("TEST_DATABASE_URL"),
        reason="needs a network database (TEST_DATABASE_URL, PostgreSQL): a SQLite file cannot go away",
    ),
]

POOL_TIMEOUT_S = 2.0
# A request may take the pool timeout plus the connect attempt it made before: never more.
MAX_REQUEST_S = 2 * POOL_TIMEOUT_S + 1.0


@dataclass
class Outcome:
    status: int
    seconds: float
    content_type: str
    retry_after: str | None


async def _traffic(client: httpx.AsyncClient, headers: dict[str, str], until: asyncio.Event) -> list[Outcome]:
    outcomes: list[Outcome] = []
    n = 0
    while not until.is_set():
        n += 1
        start = time.perf_counter()
        if n % 3:
            response = await client.get("/api/v1/items", headers=headers)
        else:
            response = await client.post("/api/v1/items", json={"title": f"t{n}"}, headers=headers)
        outcomes.append(
            Outcome(
                response.status_code,
                time.perf_counter() - start,
                response.headers.get("content-type", ""),
                response.headers.get("retry-after"),
            )
        )
        await asyncio.sleep(0.02)
    return outcomes


def _assert_failed_fast(outcomes: list[Outcome], phase: str) -> None:
    assert outcomes, f"no requests during {phase}"
    slowest = max(o.seconds for o in outcomes)
    assert slowest < MAX_REQUEST_S, f"{phase}: a request took {slowest:.2f} s"
    failures = [o for o in outcomes if o.status >= 400]
    assert failures, f"{phase}: every request succeeded, the outage was not seen"
    for o in failures:
        assert o.status == 503, f"{phase}: {o}"
        assert o.content_type.startswith("application/problem+json"), o
        assert o.retry_after is not None


async def _outage(
    client: httpx.AsyncClient, headers: dict[str, str], proxy: TcpProxy, *, blackhole: bool
) -> list[Outcome]:
    stop = asyncio.Event()
    workers = [asyncio.create_task(_traffic(client, headers, stop)) for _ in range(4)]
    await asyncio.sleep(0.3)  # traffic flows
    await proxy.cut(blackhole=blackhole)
    await asyncio.sleep(0.5)
    ready = await client.get("/readyz")
    alive = await client.get("/healthz")
    await asyncio.sleep(POOL_TIMEOUT_S * 1.5)
    stop.set()
    results = [o for w in await asyncio.gather(*workers) for o in w]
    assert ready.status_code == 503, ready.text
    assert ready.headers["content-type"].startswith("application/problem+json")
    assert alive.status_code == 200
    return results


async def _recovers(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ready = await client.get("/readyz")
        if ready.status_code == 200:
            break
        await asyncio.sleep(0.2)
    assert ready.status_code == 200, f"not ready 20 s after the database came back: {ready.text}"
    for _ in range(10):
        assert (await client.get("/api/v1/items", headers=headers)).status_code == 200
    created = await client.post("/api/v1/items", json={"title": "after"}, headers=headers)
    assert created.status_code == 201


async def test_database_outage_fails_fast_and_recovers_by_itself(tmp_path: Path) -> None:
    async with private_database(tmp_path) as url:
        target = make_url(url)
        proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
        await proxy.start()
        through_proxy = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        env = server_env(
            through_proxy,
            free_port(),
            DB_POOL_TIMEOUT=str(POOL_TIMEOUT_S),
            DB_POOL_SIZE="4",
            DB_MAX_OVERFLOW="2",
        )
        server = await asyncio.to_thread(start_server, env, tmp_path / "server.log")
        try:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
                email = "outage@example.com"
                registered = await client.post(
                    "/api/v1/auth/register", json={"email": email, "password": PASSWORD}
                )
                assert registered.status_code == 201, registered.text
                token = await client.post(
                    "/api/v1/auth/token", data={"username": email, "password": PASSWORD}
                )
                headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
                assert (await client.get("/readyz")).status_code == 200

                refused = await _outage(client, headers, proxy, blackhole=False)
                _assert_failed_fast(refused, "connections refused")
                await proxy.restore()
                await _recovers(client, headers)

                hanging = await _outage(client, headers, proxy, blackhole=True)
                _assert_failed_fast(hanging, "connections black-holed")
                await proxy.restore()
                await _recovers(client, headers)
                assert server.process.poll() is None, "the server died instead of recovering"
        finally:
            # In a thread: the proxy runs on this event loop and must carry the server's goodbyes.
            await asyncio.to_thread(server.stop)
            await proxy.close()
