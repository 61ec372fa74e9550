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
import jwt
import pytest

from app.http.state import state_of
from app.observability import metrics
from tests.conftest import PASSWORD, LogLines, assert_problem
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
        assert not state_of(app).resources.limits.redis_healthy
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
            assert not state_of(app_a).resources.limits.redis_healthy
            with private_redis(port):
                await asyncio.sleep(0.3)  # past redis_retry_interval
                await _spend_and_check_shared(a, b)
                assert state_of(app_a).resources.limits.redis_healthy


@contextmanager
def limit_storage(kind: str) -> Iterator[dict[str, Any]]:
    """Settings for the per-process counters or for a private Redis."""
    if kind == "memory":
        yield {}
        return
    port = free_port()
    with private_redis(port):
        yield {"redis_url": f"redis://127.0.0.1:{port}/0"}


@pytest.mark.parametrize("storage", ["memory", "redis"])
async def test_a_revoked_token_does_not_lock_its_owner_out(database_url: str, storage: str) -> None:
    """Finding 1 of the outside attack: after logout, requests with the logged-out token (401 each)
    spent the user's per-user allowance, and the owner's other, valid session got 429 everywhere."""
    with limit_storage(storage) as redis:
        settings = {**LIMITS, "rate_limit_per_user": "10/minute", **redis}
        async with running_app(database_url, **settings) as (_, client):
            email = new_email()
            stolen = await user(client, email)
            mine = {"Authorization": f"Bearer {(await login(client, email)).json()['access_token']}"}
            assert (await client.post("/api/v1/auth/logout", headers=stolen)).status_code == 204
            # The hot item routes (the token checked inside their statement) and the others (checked
            # by the dependency), one by one and in a concurrent burst: far past the user's 10.
            hot = [
                lambda: client.get("/api/v1/items", headers=stolen),
                lambda: client.post("/api/v1/items", headers=stolen, json={"title": "x"}),
                lambda: client.get("/api/v1/items/1", headers=stolen),
                lambda: client.get("/api/v2/items", headers=stolen),
                lambda: client.get("/api/v1/users/me", headers=stolen),
            ]
            sequential = [(await request()).status_code for request in hot * 4]
            burst = await asyncio.gather(*(client.get("/api/v1/users/me", headers=stolen) for _ in range(30)))
            # The logout spent 1 of the user's 10 (the token was good then): 9 are left.
            owner = [(await client.get("/api/v1/users/me", headers=mine)).status_code for _ in range(9)]
            over = await client.get("/api/v1/items", headers=mine)
    assert set(sequential[:10]) == {401}
    # Refused tokens are counted under a key of their own (the token's): past the per-user number
    # the stolen token gets 429 without reaching the database, and its owner is untouched.
    assert set(sequential + [r.status_code for r in burst]) <= {401, 429}
    assert burst[-1].status_code == 429
    assert owner == [200] * 9
    assert over.status_code == 429  # the owner's own 11th request: the per-user limit still holds


async def test_a_forged_token_with_another_users_sub_spends_nobodys_allowance(database_url: str) -> None:
    async with running_app(database_url, **{**LIMITS, "rate_limit_per_user": "5/minute"}) as (_, client):
        victim = await user(client)
        victim_id = (await client.get("/api/v1/users/me", headers=victim)).json()["id"]
        now = int(time.time())
        claims = {"sub": str(victim_id), "sid": "x", "jti": "y", "iat": now, "nbf": now, "exp": now + 600}
        forged = jwt.encode(
            {**claims, "iss": "fastapi-ml-service", "aud": "fastapi-ml-service"},
            "not-the-service-key-" + "z" * 32,
            algorithm="HS256",
        )
        statuses = {
            (await client.get("/api/v1/items", headers={"Authorization": f"Bearer {forged}"})).status_code
            for _ in range(20)
        }
        victims = [(await client.get("/api/v1/items", headers=victim)).status_code for _ in range(4)]
    assert statuses == {401}
    assert victims == [200] * 4  # 1 + 4 of 5: nothing of the allowance went to the forged token


@pytest.mark.parametrize(
    "media_type", ["Application/x-www-form-urlencoded", "APPLICATION/X-WWW-FORM-URLENCODED"]
)
async def test_log_in_with_a_media_type_in_capitals_is_answered_not_500(
    database_url: str, media_type: str
) -> None:
    """Finding 2: media types are case-insensitive (RFC 9110); the per-account limiter matched them
    case-sensitively, then read the consumed body as JSON: a 500 and a traceback per request."""
    async with running_app(database_url, **LIMITS) as (_, client):
        email = new_email()
        assert (await register(client, email)).status_code == 201
        form = f"username={email}&password={PASSWORD.replace(' ', '+')}"

        async def log_in(body: str) -> httpx.Response:
            return await client.post("/api/v1/auth/token", content=body, headers={"Content-Type": media_type})

        good = await log_in(form)
        wrong = await log_in(f"username={email}&password=wrong")
        missing = await log_in(f"username={email}")
        # The account's limit (3) is counted for the capitalised form too: the 4th attempt waits.
        fourth = await log_in(form)
    assert good.status_code == 200
    assert wrong.status_code == 401
    assert missing.status_code == 422
    assert fourth.status_code == 429


async def test_multipart_log_in_with_a_media_type_in_capitals(database_url: str) -> None:
    async with running_app(database_url, **LIMITS) as (_, client):
        email = new_email()
        assert (await register(client, email)).status_code == 201
        request = client.build_request(
            "POST", "/api/v1/auth/token", files={"username": (None, email), "password": (None, PASSWORD)}
        )
        boundary = request.headers["content-type"].split("boundary=", 1)[1]
        request.headers["content-type"] = f"Multipart/Form-Data; boundary={boundary}"
        response = await client.send(request)
    assert response.status_code == 200, response.text


async def test_the_account_limit_holds_whichever_form_of_the_address_is_typed(database_url: str) -> None:
    async with running_app(database_url, **LIMITS) as (_, client):
        email = new_email()
        assert (await register(client, email)).status_code == 201
        full_width = "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c for c in email)
        shouting = email.upper()
        statuses = [(await login(client, form, "wrong password")).status_code for form in (email, shouting)]
        refused = await login(client, full_width, "wrong password")
        also_refused = await login(client, email)
    assert statuses == [401, 401]
    # The third attempt at the same account, typed in full-width letters: still the account's limit.
    assert refused.status_code == 401
    assert also_refused.status_code == 429
