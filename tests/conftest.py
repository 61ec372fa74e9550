"""Shared fixtures: a migrated test database, an app per test with its lifespan, users and tokens.

The suite runs on SQLite by default and on PostgreSQL when TEST_DATABASE_URL is set. The schema is
built once per session by the real migrations; each test gets empty tables.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import URL, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.db.engine import create_engine
from app.db.migrations import upgrade_to_head
from app.http.state import state_of
from app.main import create_app
from app.models import Base
from tests.lifespan import lifespan

TEST_SECRET_KEY = "test-secret-key-" + "x" * 32

# tests/container/ runs the built image (`make image-test`, once in .ci/run): left out of every
# other run, since it needs the image and a container engine.
collect_ignore = [] if os.environ.get("IMAGE_TEST") else ["container"]
PASSWORD = "correct horse battery"


# TEST_DATABASE_URL names a PostgreSQL server and a database on it. Each pytest process that runs
# tests (the only one, or each pytest-xdist worker) works in a database of its own there, made from
# that one's name when it starts and dropped when it ends, so two runs at once (two engineers, CI
# beside a benchmark, the workers of one run) never see each other's rows. Tests that start servers
# of their own read the variable too, so it is rewritten for the process.
_SHARED_DATABASE_URL = os.environ.get("TEST_DATABASE_SHARED_URL") or os.environ.get("TEST_DATABASE_URL")
_PRIVATE_DATABASE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    if not _SHARED_DATABASE_URL:
        return
    os.environ["TEST_DATABASE_SHARED_URL"] = _SHARED_DATABASE_URL
    xdist_controller = not hasattr(config, "workerinput") and getattr(config.option, "numprocesses", None)
    if xdist_controller:  # runs no test: each of its workers makes its own
        return
    shared = make_url(_SHARED_DATABASE_URL)
    name = f"{shared.database}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    asyncio.run(admin_sql(_SHARED_DATABASE_URL, f'CREATE DATABASE "{name}"'))
    os.environ["TEST_DATABASE_URL"] = shared.set(database=name).render_as_string(hide_password=False)
    config.stash[_PRIVATE_DATABASE] = name


def pytest_unconfigure(config: pytest.Config) -> None:
    name = config.stash.get(_PRIVATE_DATABASE, None)
    if _SHARED_DATABASE_URL and name:
        asyncio.run(admin_sql(_SHARED_DATABASE_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        os.environ["TEST_DATABASE_URL"] = _SHARED_DATABASE_URL


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """TEST_ONLY_DATABASE=1 (the PostgreSQL pass of .ci/run, beside the SQLite pass that runs
    everything): only the tests that can go differently on the database named by TEST_DATABASE_URL
    and on Redis: those that use the `database_url` fixture (the app fixtures, `settings`, ...) and
    those marked `database` (they read TEST_DATABASE_URL or TEST_REDIS_URL themselves, such as
    through `private_database`; tests/unit/test_test_selection.py keeps that marking complete).
    The others (model runtimes, the model tier on its own SQLite files, pure functions) run the same
    code in both passes."""
    if not os.environ.get("TEST_ONLY_DATABASE"):
        return
    keep: list[pytest.Item] = []
    other: list[pytest.Item] = []
    for item in items:
        uses = "database_url" in getattr(item, "fixturenames", ()) or item.get_closest_marker("database")
        (keep if uses else other).append(item)
    if other:
        config.hook.pytest_deselected(items=other)
        items[:] = keep


async def admin_sql(database_url: str | URL, statement: str) -> None:
    """One statement on a PostgreSQL server outside any transaction (CREATE/DROP DATABASE)."""
    import asyncpg

    url = make_url(database_url)
    conn = await asyncpg.connect(
        user=url.username, password=url.password, host=url.host, port=url.port or 5432, database=url.database
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _database_url(tmp_root: Path) -> str:
    return os.environ.get("TEST_DATABASE_URL") or f"sqlite+aiosqlite:///{tmp_root / 'test.db'}"


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": database_url,
        "secret_key": TEST_SECRET_KEY,
        "auto_migrate": False,
        # Cheap hashes keep the suite fast; production parameters are checked in test_config.
        "password_hash_memory_kib": 1024,
        "password_hash_time_cost": 1,
        "log_json": True,
        "db_pool_size": 5,
        "db_max_overflow": 5,
        # Model tests switch this on; the rest of the suite does not pay for starting the models.
        "ml_enabled": False,
        # Freezing the heap costs a full collection at each app's start (about 0.16 s in a test
        # process, whose heap holds every test module: 2-3 minutes of a suite run); a server does
        # it once. tests/ops/test_heap.py switches it on to test it.
        "gc_freeze": False,
        # The embedded job worker (SQLite's default) costs 40-70 ms of CPU at each app's start and
        # polls its queue; tests/jobs switches it on where a job must run.
        "jobs_embedded_worker": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def _reset_schema(settings: Settings) -> None:
    engine = create_engine(settings)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        await upgrade_to_head(engine)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = _database_url(tmp_path_factory.mktemp("db"))
    asyncio.run(_reset_schema(make_settings(url)))
    return url


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


async def empty_tables(engine: AsyncEngine) -> None:
    """Delete every row, children first, and restart the ids at 1. DELETE, not TRUNCATE, on
    PostgreSQL too: the tables hold a test's few rows, and TRUNCATE of them all took 70-200 ms
    against 7-20 ms (it makes new files for each table), once per test."""
    tables = list(reversed(Base.metadata.sorted_tables))
    async with engine.begin() as conn:
        for table in tables:
            await conn.execute(table.delete())
        if engine.dialect.name == "postgresql":
            await conn.execute(
                text(
                    "SELECT setval(format('%I.%I', schemaname, sequencename)::regclass, 1, false)"
                    " FROM pg_sequences WHERE schemaname = current_schema()"
                )
            )
        else:
            # Ids restart at 1 here too (the tables say AUTOINCREMENT,
            # so a DELETE alone would not reset them).
            await conn.execute(text("DELETE FROM sqlite_sequence"))


async def empty_database(database_url: str) -> None:
    """`empty_tables` with an engine of its own, for after an app has shut down: its shutdown writes
    its last records (the prediction log's last batch), which must still find their users."""
    engine = create_engine(make_settings(database_url))
    try:
        await empty_tables(engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    # The app itself, not `manager.app` (a wrapper function without `.state`): the lifespan keeps
    # its resources on `app.state`, which tests and `make_user` reach into.
    try:
        async with lifespan(application):
            yield application
    finally:
        await empty_database(settings.database_url)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


Headers = dict[str, str]
MakeUser = Callable[..., Awaitable[Headers]]


@pytest.fixture
def make_user(client: httpx.AsyncClient, app: FastAPI) -> MakeUser:
    """Register a user (optionally an admin), log in, and return their Authorization header."""

    async def _make(email: str | None = None, *, admin: bool = False, password: str = PASSWORD) -> Headers:
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
        response = await client.post("/api/v1/auth/register", json={"email": email, "password": password})
        assert response.status_code == 201, response.text
        if admin:
            async with state_of(app).resources.db.engine.begin() as conn:
                await conn.execute(
                    text("UPDATE users SET is_admin = :yes WHERE email = :email"),
                    {"yes": True, "email": email.lower()},
                )
        token = await client.post("/api/v1/auth/token", data={"username": email, "password": password})
        assert token.status_code == 200, token.text
        return {"Authorization": f"Bearer {token.json()['access_token']}"}

    return _make


@pytest.fixture
async def user_headers(make_user: MakeUser) -> Headers:
    return await make_user("alice@example.com")


@pytest.fixture
async def other_headers(make_user: MakeUser) -> Headers:
    return await make_user("bob@example.com")


@pytest.fixture
async def admin_headers(make_user: MakeUser) -> Headers:
    return await make_user("admin@example.com", admin=True)


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is RFC 9457 problem details with this status; returns the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    assert "Traceback" not in response.text
    return body


LogLines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def log_lines(capsys: pytest.CaptureFixture[str]) -> LogLines:
    """The JSON log lines written so far in this test, parsed. (The service's log stream writes
    to whatever `sys.stdout` is at the time, so capsys sees every line.)"""

    def _read() -> list[dict[str, Any]]:
        lines = capsys.readouterr().out.splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    return _read
