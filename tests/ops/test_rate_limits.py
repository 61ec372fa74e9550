"""Rate limits: per address and per account on log-in and registration, per user everywhere;
in-process without Redis, shared through Redis with it, and still serving when Redis is down."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from app.core import metrics
from tests.conftest import LogLines, assert_problem
from tests.faults.server import free_port
from tests.ops.conftest import login, new_email, register, running_app, user

LIMITS: dict[str, Any] = {
    "rate_limit_enabled": True,
    "rate_limit_auth_per_address": "8/minute",
    "rate_limit_auth_per_account": "3/minute",
    "rate_limit_per_user": None,
}


def _limited(limit: str) -> float:
    return metrics.RATE_LIMITED.labels(limit)._value.get()


async def test_login_is_limited_per_account_with_retry_after(database_url: str) -> None:
    async with running_app(database_url, **LIMITS) as (_, client):
        email = new_email()
        assert (await register(client, email)).status_code == 201
        before = _limited("login_account")
        statuses = [(await login(client, email, "wrong password")).status_code for _ in range(3)]
        refused = await login(client, email)  # even the right password now waits
        other = new_email()
        assert (await register(client, other)).status_code == 201
        other_login = await login(client, other)
    assert statuses == [401, 401, 401]
    body = assert_problem(refused, 429)
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert "account" in body["detail"]
    assert _limited("login_account") == before + 1
    # The limit is the account's: another account from the same address still logs in.
    assert other_login.status_code == 200


async def test_login_is_limited_per_address_over_many_accounts(database_url: str) -> None:
    async with running_app(database_url, **LIMITS) as (_, client):
        statuses = [(await login(client, new_email(), "whatever1")).status_code for _ in range(9)]
    assert statuses == [401] * 8 + [429]


async def test_registration_is_limited_per_address_and_per_email(database_url: str) -> None:
    async with running_app(database_url, **LIMITS) as (_, client):
        email = new_email()
        same = [(await register(client, email)).status_code for _ in range(4)]
        spread = [(await register(client, new_email())).status_code for _ in range(5)]
    assert same == [201, 409, 409, 429]
    assert spread == [201, 201, 201, 201, 429]


async def test_authenticated_requests_are_limited_per_user(database_url: str) -> None:
    async with running_app(database_url, **{**LIMITS, "rate_limit_per_user": "5/minute"}) as (_, client):
        alice = await user(client)
        bob = await user(client)
        statuses = [(await client.get("/api/v1/items", headers=alice)).status_code for _ in range(6)]
        refused = await client.get("/api/v1/users/me", headers=alice)
        bobs = await client.get("/api/v1/items", headers=bob)
        anonymous = await client.get("/healthz")
    assert statuses == [200] * 5 + [429]
    assert_problem(refused, 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert bobs.status_code == 200
    assert anonymous.status_code == 200


async def test_limits_off_refuse_nothing(database_url: str) -> None:
    async with running_app(database_url, **{**LIMITS, "rate_limit_enabled": False}) as (_, client):
        email = new_email()
        assert (await register(client, email)).status_code == 201
        statuses = {(await login(client, email)).status_code for _ in range(6)}
    assert statuses == {200}


async def test_unreachable_redis_fails_open_logged_and_counted(
    database_url: str, log_lines: LogLines
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with running_app(database_url, **LIMITS, redis_url=closed, redis_retry_interval=0.01) as (
        app,
        client,
    ):
        errors = metrics.RATE_LIMIT_STORAGE_ERRORS._value.get()
        email = new_email()
        assert (await register(client, email)).status_code == 201
        assert (await login(client, email)).status_code == 200
        # Served, with this process's own counters standing in: the account limit still holds.
        statuses = [(await login(client, email)).status_code for _ in range(3)]
        assert not app.state.rate_limits.redis_healthy
    assert statuses == [200, 200, 429]
    assert metrics.RATE_LIMIT_STORAGE_ERRORS._value.get() > errors
    warnings = [line for line in log_lines() if line["event"] == "rate_limit_redis_unavailable"]
    assert len(warnings) == 1  # once per outage, not per request
    assert warnings[0]["level"] == "warning"


@contextmanager
def private_redis(port: int) -> Iterator[subprocess.Popen[bytes]]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (scripts/services.sh installs it from Debian)")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


async def _spend_and_check_shared(a: httpx.AsyncClient, b: httpx.AsyncClient) -> None:
    """Spend an account's log-in limit on app A; app B must refuse it too."""
    email = new_email()
    assert (await register(a, email)).status_code == 201
    assert [(await login(a, email)).status_code for _ in range(3)] == [200, 200, 200]
    assert (await login(b, email)).status_code == 429


async def test_limits_are_shared_through_redis_and_recover_after_an_outage(database_url: str) -> None:
    port = free_port()
    settings = {**LIMITS, "redis_url": f"redis://127.0.0.1:{port}/0", "redis_retry_interval": 0.2}
    with private_redis(port) as first:
        async with (
            running_app(database_url, **settings) as (app_a, a),
            running_app(database_url, **settings) as (_, b),
        ):
            await _spend_and_check_shared(a, b)
            first.kill()
            first.wait(timeout=10)
            # Redis gone: still served (per-process limits), never a 5xx.
            email = new_email()
            assert (await register(a, email)).status_code == 201
            assert (await login(a, email)).status_code == 200
            assert (await login(b, email)).status_code == 200
            assert not app_a.state.rate_limits.redis_healthy
            with private_redis(port):
                await asyncio.sleep(0.3)  # past redis_retry_interval
                await _spend_and_check_shared(a, b)
                assert app_a.state.rate_limits.redis_healthy
