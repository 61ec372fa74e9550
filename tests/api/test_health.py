"""/healthz and /readyz: liveness touches nothing; readiness needs a reachable, migrated database."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from app.core.config import Settings
from tests.api.conftest import serve
from tests.conftest import PASSWORD, LogLines, assert_problem, make_settings


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_when_migrated(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["database"] == "ok"
    assert body["migrations"]


async def test_readyz_is_503_on_an_empty_database(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}", auto_migrate=False)
    async with serve(settings) as client:
        body = assert_problem(await client.get("/readyz"), 503)
        assert "migrat" in body["detail"]
        assert (await client.get("/healthz")).status_code == 200


async def test_readyz_is_503_on_an_older_revision(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}", auto_migrate=True)
    async with serve(settings) as client:
        assert (await client.get("/readyz")).status_code == 200
    # Pretend the database was migrated by older code.
    import sqlite3

    with sqlite3.connect(tmp_path / "old.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'older'")
    async with serve(make_settings(settings.database_url, auto_migrate=False)) as client:
        body = assert_problem(await client.get("/readyz"), 503)
        assert "older" in body["detail"]


async def test_embedded_database_migrates_itself_at_start_up(tmp_path: Path) -> None:
    """The `make run` path: a fresh SQLite file, migrations left to their default (on for SQLite)."""
    database = tmp_path / "data" / "app.db"
    settings = make_settings(f"sqlite+aiosqlite:///{database}", auto_migrate=None)
    assert settings.migrate_on_startup
    async with serve(settings) as client:
        assert (await client.get("/readyz")).status_code == 200
        registered = await client.post(
            "/api/v1/auth/register", json={"email": "a@example.com", "password": PASSWORD}
        )
        assert registered.status_code == 201
    assert database.exists()
    # A restart keeps the data and migrates nothing twice.
    async with serve(settings) as client:
        token = await client.post(
            "/api/v1/auth/token", data={"username": "a@example.com", "password": PASSWORD}
        )
        assert token.status_code == 200


def test_postgresql_is_not_migrated_at_start_up_by_default(settings: Settings) -> None:
    pg = make_settings("postgresql+asyncpg://u:p@127.0.0.1/db", auto_migrate=None)
    assert not pg.migrate_on_startup
    assert make_settings("sqlite+aiosqlite:///x.db", auto_migrate=None).migrate_on_startup


async def test_development_without_a_secret_key_generates_one_and_says_so(
    tmp_path: Path, log_lines: LogLines
) -> None:
    key_file = tmp_path / "data" / ".dev-secret-key"
    dev = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'dev.db'}",
        auto_migrate=True,
        environment="development",
        secret_key=None,
        dev_secret_key_file=key_file,
    )
    async with serve(dev) as client:
        await client.post("/api/v1/auth/register", json={"email": "dev@example.com", "password": PASSWORD})
        token = await client.post(
            "/api/v1/auth/token", data={"username": "dev@example.com", "password": PASSWORD}
        )
        assert token.status_code == 200
        access = token.json()["access_token"]
    assert key_file.exists()
    warnings = [line for line in log_lines() if line.get("event") == "development_secret_key"]
    assert len(warnings) == 1
    assert warnings[0]["path"] == str(key_file)
    assert key_file.read_text().strip() not in json.dumps(warnings)
    # After a restart, the same key: the token still works.
    async with serve(dev) as client:
        me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {access}"})
        assert me.status_code == 200
