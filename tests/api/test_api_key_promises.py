"""What docs/api.md and docs/security.md promise about API keys, each held by a test that fails when
the promise breaks (issue 21): the list's order, another user's key a 404, one answer for every
refused key, keys outliving a password change, no key in the stored row, a forged tag refused with
no query, and `last_used_at` written in batches, at shutdown, and only forward.

Everything is asserted through the API and the `api_keys` rows, so the tests hold however the key
code is arranged inside."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.core.config import Settings
from app.http.state import state_of
from app.main import create_app
from tests.api.conftest import serve, user_id
from tests.conftest import PASSWORD, Headers, MakeUser, assert_problem, empty_tables, make_settings

REFUSED_DETAIL = "The API key is invalid, expired or revoked."  # docs/api.md, "Errors"
SHOWN_CHARS = 12  # docs/api.md: "Lists show its first 12 characters (`prefix`)"


async def make_key(
    client: httpx.AsyncClient, owner: Headers, scopes: list[str], name: str = "a program"
) -> dict[str, Any]:
    made = await client.post("/api/v1/api-keys", json={"name": name, "scopes": scopes}, headers=owner)
    assert made.status_code == 201, made.text
    body: dict[str, Any] = made.json()
    return body


def bearer(key: str) -> Headers:
    return {"Authorization": f"Bearer {key}"}


@contextmanager
def statements_on(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every SQL statement the engine sends while the block runs (one entry per execute, an
    executemany included), and every connection checked out of its pool, as `"checkout"`: on
    PostgreSQL the hot paths run their statements on asyncpg itself, past SQLAlchemy's execution
    events, but on a connection checked out of the same pool (with nobody waiting for one, each
    request checks out its own)."""
    seen: list[str] = []

    def statement(*args: Any) -> None:
        seen.append(args[2])  # (conn, cursor, statement, parameters, context, executemany)

    def checkout(*_: Any) -> None:
        seen.append("checkout")

    event.listen(engine.sync_engine, "before_cursor_execute", statement)
    event.listen(engine.sync_engine.pool, "checkout", checkout)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", statement)
        event.remove(engine.sync_engine.pool, "checkout", checkout)


def usage_writes(statements: list[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith("UPDATE API_KEYS") and "last_used_at" in s]


async def key_row(engine: AsyncEngine, key_id: int) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM api_keys WHERE id = :id"), {"id": key_id})).one()
    return dict(row._mapping)


async def stored_last_used(engine: AsyncEngine, key_id: int) -> datetime | None:
    """`last_used_at` as stored, read as text (SQLite) or a datetime (PostgreSQL), made aware."""
    value = (await key_row(engine, key_id))["last_used_at"]
    if value is None:
        return None
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


# --- listing and revoking -------------------------------------------------------------------------


async def test_keys_are_listed_newest_first(client: httpx.AsyncClient, user_headers: Headers) -> None:
    # Names in an order that is neither alphabetical nor reversed: only "newest first" gives c, a, b.
    for name in ("b", "a", "c"):
        await make_key(client, user_headers, ["items:read"], name=name)
    listed = await client.get("/api/v1/api-keys", headers=user_headers)
    assert listed.status_code == 200
    keys = listed.json()
    assert [k["name"] for k in keys] == ["c", "a", "b"]
    created = [datetime.fromisoformat(k["created_at"]) for k in keys]
    assert created == sorted(created, reverse=True)
    # A revoked key keeps its place (it is still listed, saying when it was revoked).
    revoked = await client.delete(f"/api/v1/api-keys/{keys[1]['id']}", headers=user_headers)
    assert revoked.status_code == 204
    again = (await client.get("/api/v1/api-keys", headers=user_headers)).json()
    assert [k["name"] for k in again] == ["c", "a", "b"]
    assert [k["revoked_at"] is not None for k in again] == [False, True, False]


async def test_revoking_another_users_existing_key_is_a_404_and_changes_nothing(
    client: httpx.AsyncClient, user_headers: Headers, other_headers: Headers
) -> None:
    alices = await make_key(client, user_headers, ["items:read"])
    bobs = await make_key(client, other_headers, ["items:read"])
    missing = bobs["id"] + alices["id"] + 1000  # an id no key has

    theirs = await client.delete(f"/api/v1/api-keys/{alices['id']}", headers=other_headers)
    nobodys = await client.delete(f"/api/v1/api-keys/{missing}", headers=other_headers)
    problem = assert_problem(theirs, 404)
    # The same answer as for a key that does not exist: Bob learns nothing about Alice's key.
    assert {k: v for k, v in problem.items() if k != "instance"} == {
        k: v for k, v in assert_problem(nobodys, 404).items() if k != "instance"
    }

    assert (await client.get("/api/v1/items", headers=bearer(alices["key"]))).status_code == 200
    [listed] = (await client.get("/api/v1/api-keys", headers=user_headers)).json()
    assert listed["id"] == alices["id"]
    assert listed["revoked_at"] is None


# --- refused keys ---------------------------------------------------------------------------------


def _forge(key: str) -> str:
    """The same key with a different 8-character tag: well-formed, but not one this service made."""
    tag = key[-8:]
    other = "AAAAAAAA" if tag != "AAAAAAAA" else "BBBBBBBB"
    return key[:-8] + other


async def _set_expiry_past(engine: AsyncEngine, key_id: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE api_keys SET expires_at = :at WHERE id = :id"),
            {"at": datetime.now(UTC) - timedelta(seconds=1), "id": key_id},
        )


ROUTES = [  # a hot item route (one joined statement), a write, and a route checked apart
    ("GET", "/api/v1/items", None),
    ("POST", "/api/v1/items", {"title": "written with a refused key"}),
    ("GET", "/api/v1/predictions", None),
]
SCOPES = ["items:read", "items:write", "predictions:read"]


async def test_every_refused_key_gets_the_same_answer(
    app: FastAPI, client: httpx.AsyncClient, make_user: MakeUser, admin_headers: Headers
) -> None:
    """Malformed, forged, unknown, revoked, expired, owner deactivated, owner deleted: the same
    status, problem type, title, detail and `WWW-Authenticate`, whether or not this process has
    seen the key accepted before (a key it knows and one it does not take different paths)."""
    engine = state_of(app).resources.db.engine
    owner = await make_user()
    control = await make_key(client, owner, SCOPES)
    keys: dict[str, str] = {
        "malformed": "mlk_" + "x" * 12,
        "forged tag": _forge(control["key"]),
    }

    # Unknown: made by this service (its tag is right), but no row stands behind it.
    unknown = await make_key(client, owner, SCOPES)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM api_keys WHERE id = :id"), {"id": unknown["id"]})
    keys["unknown"] = unknown["key"]

    async def pair(case: str, who: Headers) -> tuple[dict[str, Any], dict[str, Any]]:
        seen, unseen = await make_key(client, who, SCOPES), await make_key(client, who, SCOPES)
        assert (await client.get("/api/v1/items", headers=bearer(seen["key"]))).status_code == 200
        keys[f"{case} (seen)"], keys[f"{case} (unseen)"] = seen["key"], unseen["key"]
        return seen, unseen

    for made in await pair("revoked", owner):
        assert (await client.delete(f"/api/v1/api-keys/{made['id']}", headers=owner)).status_code == 204
    for made in await pair("expired", owner):
        await _set_expiry_past(engine, made["id"])
    for action in ("deactivated", "deleted"):
        someone = await make_user()
        await pair(f"owner {action}", someone)
        uid = await user_id(client, someone)
        if action == "deactivated":
            changed = await client.patch(
                f"/api/v1/users/{uid}", json={"is_active": False}, headers=admin_headers
            )
            assert changed.status_code == 200, changed.text
        else:
            assert (await client.delete(f"/api/v1/users/{uid}", headers=admin_headers)).status_code == 204

    for method, path, body in ROUTES:
        answers: dict[str, tuple[Any, ...]] = {}
        for case, key in keys.items():
            response = await client.request(method, path, json=body, headers=bearer(key))
            assert response.status_code == 401, (case, method, path, response.text)
            problem = assert_problem(response, 401)
            answers[case] = (
                response.status_code,
                response.headers["content-type"],
                response.headers.get("WWW-Authenticate"),
                problem["type"],
                problem["title"],
                problem["detail"],
                sorted(problem),  # no extra member that would tell the cases apart
            )
        cases_by_answer: dict[str, list[str]] = {}
        for case, answer in answers.items():
            cases_by_answer.setdefault(repr(answer), []).append(case)
        assert len(cases_by_answer) == 1, (method, path, cases_by_answer)
        assert answers["malformed"][5] == REFUSED_DETAIL
        # The control key still works, so the refusals were about the keys, not the route.
        accepted = await client.request(method, path, json=body, headers=bearer(control["key"]))
        assert accepted.status_code in {200, 201}, accepted.text
    # Nothing was written by a refused key: the one item with that title is the control's.
    items = await client.get("/api/v1/items", params={"limit": 100}, headers=admin_headers)
    titles = [item["title"] for item in items.json()]
    assert titles.count("written with a refused key") == 1


async def test_a_password_change_does_not_end_the_users_keys(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    """docs/api.md: "A password change ends the user's login sessions but not their keys"."""
    email = f"pw-{uuid.uuid4().hex[:8]}@example.com"
    owner = await make_user(email)
    seen = await make_key(client, owner, ["items:read", "items:write"])
    unseen = await make_key(client, owner, ["items:read", "items:write"])
    assert (await client.get("/api/v1/items", headers=bearer(seen["key"]))).status_code == 200

    changed = await client.post(
        "/api/v1/users/me/password",
        json={"current_password": PASSWORD, "new_password": "a brand new passphrase"},
        headers=owner,
    )
    assert changed.status_code == 204, changed.text
    # The login session did end (so the change really happened) ...
    assert_problem(await client.get("/api/v1/users/me", headers=owner), 401)
    # ... and both keys, the one this process knew and the one it did not, still work.
    for made in (seen, unseen):
        key = bearer(made["key"])
        assert (await client.get("/api/v1/items", headers=key)).status_code == 200
        created = await client.post("/api/v1/items", json={"title": "after the change"}, headers=key)
        assert created.status_code == 201, created.text
    relogin = await client.post(
        "/api/v1/auth/token", data={"username": email, "password": "a brand new passphrase"}
    )
    again = bearer(relogin.json()["access_token"])
    listed = (await client.get("/api/v1/api-keys", headers=again)).json()
    assert [k["revoked_at"] for k in listed] == [None, None]


# --- storage --------------------------------------------------------------------------------------


def _text_forms(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return [raw.hex(), raw.decode("latin-1")]
    return [str(value)]


async def test_the_stored_row_holds_no_key(
    app: FastAPI, client: httpx.AsyncClient, user_headers: Headers
) -> None:
    """docs/security.md: the database holds a keyed hash and the first 12 characters; never the
    key, nor an unkeyed hash of it that a dump would let anyone test a guess against."""
    made = await make_key(client, user_headers, ["items:read"])
    key = made["key"]
    assert (await client.get("/api/v1/items", headers=bearer(key))).status_code == 200
    row = await key_row(state_of(app).resources.db.engine, made["id"])

    # Any 13 characters in a row of the key: more than the documented shown prefix, anywhere in it.
    windows = {key[i : i + SHOWN_CHARS + 1] for i in range(len(key) - SHOWN_CHARS)}
    unkeyed = {
        hashlib.new(name, data).hexdigest()
        for name in ("md5", "sha1", "sha256", "sha512", "blake2b", "sha3_256")
        for data in (key.encode(), key[len("mlk_") :].encode(), key[len("mlk_") : -8].encode())
    }
    shown = [column for column, value in row.items() if key[:SHOWN_CHARS] in _text_forms(value)]
    assert shown == ["prefix"], row
    for column, value in row.items():
        for form in _text_forms(value):
            assert not any(window in form for window in windows), (column, "holds part of the key")
            assert not any(digest in form.lower() for digest in unkeyed), (column, "an unkeyed hash")


# --- forged keys cost nothing ---------------------------------------------------------------------


async def test_a_forged_or_malformed_key_is_refused_before_any_query(
    app: FastAPI, client: httpx.AsyncClient, user_headers: Headers
) -> None:
    engine = state_of(app).resources.db.engine
    made = await make_key(client, user_headers, SCOPES)
    refused = {
        "forged tag": _forge(made["key"]),
        "truncated": made["key"][:-1],
        "malformed": "mlk_" + "!" * 40,
    }
    for case, key in refused.items():
        for method, path, body in ROUTES:
            with statements_on(engine) as statements:
                response = await client.request(method, path, json=body, headers=bearer(key))
            assert_problem(response, 401)
            assert statements == [], (case, method, path, statements)
    # The control: a well-formed key this process has not seen is looked up, and the count sees it.
    unseen = await make_key(client, user_headers, SCOPES)
    with statements_on(engine) as statements:
        assert (await client.get("/api/v1/items", headers=bearer(unseen["key"]))).status_code == 200
    assert "checkout" in statements, "the counter saw nothing for a key that needs a lookup"


# --- last_used_at ---------------------------------------------------------------------------------


@asynccontextmanager
async def replica(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, list[str]]]:
    """A process of its own on the shared database; every statement its engine sends, shutdown
    included, is in the list."""
    application = create_app(settings)
    statements: list[str] = []
    async with serve(settings, application) as client:
        engine = state_of(application).resources.db.engine

        def note(*args: Any) -> None:
            statements.append(args[2])

        event.listen(engine.sync_engine, "before_cursor_execute", note)
        yield client, statements


@pytest.fixture
async def outside(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine of the test's own, to read rows while and after the apps run; empties the tables
    after (the apps made with `serve` do not)."""
    engine = create_async_engine(database_url)
    try:
        yield engine
    finally:
        await empty_tables(engine)
        await engine.dispose()


def _usage_settings(database_url: str) -> Settings:
    # A flush interval far longer than the test: any write before shutdown is not the batch's.
    return make_settings(database_url, api_key_usage_flush_seconds=3600, rate_limit_enabled=False)


async def _owner_and_key(client: httpx.AsyncClient) -> tuple[Headers, dict[str, Any]]:
    email = f"usage-{uuid.uuid4().hex[:8]}@example.com"
    registered = await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert registered.status_code == 201, registered.text
    token = await client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
    owner = bearer(token.json()["access_token"])
    return owner, await make_key(client, owner, ["items:read"])


async def test_last_used_at_is_not_written_per_request(database_url: str, outside: AsyncEngine) -> None:
    settings = _usage_settings(database_url)
    async with replica(settings) as (client, statements):
        _, made = await _owner_and_key(client)
        for _ in range(40):
            assert (await client.get("/api/v1/items", headers=bearer(made["key"]))).status_code == 200
        during = usage_writes(statements)
        assert len(during) <= 1, during  # 40 requests within one flush interval: at most one write
    after = usage_writes(statements)
    assert after, "the counter saw no write at all, not even the shutdown's"
    assert await stored_last_used(outside, made["id"]) is not None


async def test_last_used_at_is_written_at_shutdown(database_url: str, outside: AsyncEngine) -> None:
    settings = _usage_settings(database_url)
    async with replica(settings) as (client, statements):
        _, made = await _owner_and_key(client)
        first = datetime.now(UTC)
        for _ in range(3):
            assert (await client.get("/api/v1/items", headers=bearer(made["key"]))).status_code == 200
        last = datetime.now(UTC)
        assert await stored_last_used(outside, made["id"]) is None  # not yet: the interval is 1 h
    # The app closed long before its flush interval: the shutdown wrote the use.
    assert len(usage_writes(statements)) == 1
    stored = await stored_last_used(outside, made["id"])
    assert stored is not None
    assert first - timedelta(seconds=1) <= stored <= last + timedelta(seconds=1)


async def test_last_used_at_only_moves_forward(database_url: str, outside: AsyncEngine) -> None:
    """Two replicas use the key, the earlier user flushing last: its older time does not move the
    stored one back."""
    settings = _usage_settings(database_url)
    async with replica(settings) as (early, early_statements):
        owner, made = await _owner_and_key(early)
        key = bearer(made["key"])
        assert (await early.get("/api/v1/items", headers=key)).status_code == 200
        used_early = datetime.now(UTC)
        await asyncio.sleep(0.05)  # the later use is a later time, whatever the clock's resolution
        async with replica(settings) as (late, late_statements):
            assert (await late.get("/api/v1/items", headers=key)).status_code == 200
        assert len(usage_writes(late_statements)) == 1
        written_late = await stored_last_used(outside, made["id"])
        assert written_late is not None
        assert written_late > used_early
        assert usage_writes(early_statements) == []
    # The early replica did write its (older) use at shutdown ...
    assert len(usage_writes(early_statements)) == 1
    # ... and the stored time stayed the later one.
    assert await stored_last_used(outside, made["id"]) == written_late
    listed = (await _listing(settings, owner))[0]
    assert datetime.fromisoformat(listed["last_used_at"]) == written_late


async def _listing(settings: Settings, owner: Headers) -> list[dict[str, Any]]:
    async with serve(settings) as client:
        response = await client.get("/api/v1/api-keys", headers=owner)
        assert response.status_code == 200, response.text
        body: list[dict[str, Any]] = response.json()
        return body
