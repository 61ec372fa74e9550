"""SIGKILL in the middle of a write load: nothing acknowledged is lost, nothing half-written appears.

A real server process takes concurrent item creations; it is killed with SIGKILL (no shutdown code
runs) while requests are in flight, then started again on the same database. Every creation that
was answered 201 is there with exactly the content sent; every item that is there is one that was
sent, whole (its description is derived from its title, so a torn write would not match).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx
import pytest

from tests.conftest import PASSWORD
from tests.faults.server import Server, free_port, private_database, server_env, start_server

pytestmark = [pytest.mark.slow, pytest.mark.database]

WRITERS = 12
KILL_AFTER_ACKS = 150


def _description(title: str) -> str:
    # Long enough to span several database pages' worth of row data in a batch of inserts.
    return hashlib.sha256(title.encode()).hexdigest() * 40


async def _writer(
    client: httpx.AsyncClient, headers: dict[str, str], wid: int, acked: dict[int, str], sent: set[str]
) -> None:
    n = 0
    while True:
        n += 1
        title = f"w{wid}-{n}"
        sent.add(title)
        try:
            response = await client.post(
                "/api/v1/items", json={"title": title, "description": _description(title)}, headers=headers
            )
        except httpx.HTTPError:
            return  # the server is gone: this request's fate is unknown, which is allowed
        if response.status_code == 201:
            body = response.json()
            assert body["title"] == title
            acked[body["id"]] = title


async def _all_items(client: httpx.AsyncClient, headers: dict[str, str]) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 100}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/v2/items", params=params, headers=headers)).json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return items


async def _login(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    token = await client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


async def test_sigkill_during_writes_loses_no_acknowledged_write(tmp_path: Path) -> None:
    async with private_database(tmp_path) as url:
        env = server_env(url, free_port())
        log = tmp_path / "server.log"
        server: Server = await asyncio.to_thread(start_server, env, log)
        email = "writer@example.com"
        acked: dict[int, str] = {}
        sent: set[str] = set()
        try:
            limits = httpx.Limits(max_connections=WRITERS)
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30, limits=limits) as client:
                registered = await client.post(
                    "/api/v1/auth/register", json={"email": email, "password": PASSWORD}
                )
                assert registered.status_code == 201, registered.text
                headers = await _login(client, email)
                writers = [
                    asyncio.create_task(_writer(client, headers, w, acked, sent)) for w in range(WRITERS)
                ]
                while len(acked) < KILL_AFTER_ACKS:
                    await asyncio.sleep(0.005)
                    assert not any(w.done() for w in writers), server.log_tail()
                server.kill()  # mid-load: WRITERS requests are in flight
                await asyncio.wait_for(asyncio.gather(*writers), timeout=30)
            in_flight_at_kill = len(sent) - len(acked)
            assert in_flight_at_kill >= 1

            server = await asyncio.to_thread(start_server, env, log)
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
                items = await _all_items(client, await _login(client, email))
        finally:
            await asyncio.to_thread(server.stop)

    stored = {int(str(item["id"])): item for item in items}
    lost = {i: t for i, t in acked.items() if i not in stored}
    assert not lost, f"{len(lost)} acknowledged writes lost: {sorted(lost.items())[:5]}"
    for item_id, title in acked.items():
        assert stored[item_id]["title"] == title
    for item in items:
        title = str(item["title"])
        assert title in sent, f"an item nobody sent: {item}"
        assert item["description"] == _description(title), f"half-written item {item['id']}"
    assert len({item["title"] for item in items}) == len(items), "an item was written twice"
