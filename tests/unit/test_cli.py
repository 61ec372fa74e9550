"""`python -m app.cli`: migrate, create-admin, and serve's preparation."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from app import cli
from app.core.config import Settings
from app.db.migrations import head_revision
from tests.api.conftest import login, serve
from tests.conftest import TEST_SECRET_KEY, make_settings


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh SQLite file the command line is pointed at through the environment."""
    for name in list(os.environ):
        if name.lower() in Settings.model_fields:
            monkeypatch.delenv(name)
    path = tmp_path / "cli.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENVIRONMENT", "test")
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{path}")
    monkeypatch.setenv("SECRET_KEY", TEST_SECRET_KEY)
    monkeypatch.setenv("PASSWORD_HASH_MEMORY_KIB", "1024")
    monkeypatch.setenv("PASSWORD_HASH_TIME_COST", "1")
    return path


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _users(path: Path) -> list[tuple[str, int, int]]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute("SELECT email, is_admin, is_active FROM users ORDER BY id"))


def test_migrate(database: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["migrate"]) == 0
    assert {"users", "items", "auth_sessions", "refresh_tokens", "alembic_version"} <= _tables(database)
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == head_revision()
    assert "migrated" in capsys.readouterr().out
    # Running it again is harmless.
    assert cli.main(["migrate"]) == 0


def test_create_admin_creates_then_promotes(database: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["create-admin", "--email", "Root@Example.com", "--password", "root password"]) == 0
    assert "created" in capsys.readouterr().out
    assert _users(database) == [("root@example.com", 1, 1)]
    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE users SET is_admin = 0, is_active = 0")
    assert cli.main(["create-admin", "--email", "root@example.com", "--password", "ignored password"]) == 0
    assert "promoted" in capsys.readouterr().out
    assert _users(database) == [("root@example.com", 1, 1)]


async def test_the_created_admin_logs_in_and_administers(
    database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADMIN_PASSWORD", "from the environment")
    assert await asyncio.to_thread(cli.main, ["create-admin", "--email", "boss@example.com"]) == 0
    settings = make_settings(f"sqlite+aiosqlite:///{database}")
    async with serve(settings) as client:
        pair = await login(client, "boss@example.com", "from the environment")
        users = await client.get("/api/v1/users", headers={"Authorization": f"Bearer {pair['access_token']}"})
        assert users.status_code == 200
        assert [u["email"] for u in users.json()] == ["boss@example.com"]


@pytest.mark.parametrize(
    ("email", "password", "field"),
    [("not-an-email", "long enough pw", "email"), ("ok@example.com", "short", "password")],
)
def test_create_admin_refuses_bad_input(
    database: Path, capsys: pytest.CaptureFixture[str], email: str, password: str, field: str
) -> None:
    assert cli.main(["create-admin", "--email", email, "--password", password]) == 2
    err = capsys.readouterr().err
    assert f"invalid {field}" in err
    assert password not in err
    assert not database.exists(), "it touched the database before checking the input"


def test_a_configuration_error_exits_2_with_one_line_per_problem(
    database: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("SECRET_KEY", "weak")
    with pytest.raises(SystemExit) as exited:
        cli.main(["migrate"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("configuration error: SECRET_KEY")
    assert not database.exists()


def test_serve_migrates_the_embedded_database_once_before_the_workers(
    database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Settings] = []

    def fake_serve(settings: Settings) -> int:
        # The workers start after the migration, told not to migrate again.
        assert "alembic_version" in _tables(database)
        assert os.environ["AUTO_MIGRATE"] == "false"
        started.append(settings)
        return 0

    monkeypatch.setattr("app.server.serve", fake_serve)
    # Set then removed, so monkeypatch restores it after the test (serve sets it); unset: "SQLite: yes".
    monkeypatch.setenv("AUTO_MIGRATE", "")
    monkeypatch.delenv("AUTO_MIGRATE")
    assert cli.main(["serve"]) == 0
    assert len(started) == 1
    assert started[0].database_url.endswith("cli.db")


def test_serve_leaves_postgresql_to_the_migrate_command(
    monkeypatch: pytest.MonkeyPatch, database: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://nobody:nothing@127.0.0.1:1/nowhere")
    monkeypatch.setattr("app.server.serve", lambda _settings: 0)
    assert cli.main(["serve"]) == 0
    assert "AUTO_MIGRATE" not in os.environ


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([])
    assert exited.value.code == 2


def test_create_admin_normalises_the_email(database: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11, finding 4: the command stores and finds the one normal form, as registration does."""
    full_width_root = "\uff32\uff2f\uff2f\uff34@xn--bcher-kva.example"
    assert cli.main(["create-admin", "--email", full_width_root, "--password", "root pw!"]) == 0
    assert "created" in capsys.readouterr().out
    assert cli.main(["create-admin", "--email", "root@BÜCHER.example", "--password", "root pw!"]) == 0
    assert "promoted" in capsys.readouterr().out
    assert _users(database) == [("root@bücher.example", 1, 1)]


@pytest.mark.parametrize("command", [["migrate"], ["serve"], ["create-admin", "--email", "a@example.com"]])
def test_an_unwritable_database_folder_exits_2_with_one_line(
    database: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    """Issue 16: a read-only data volume is a one-line start-up error, not a traceback. Root passes
    permission bits, so the folder here is a file; tests/container/ mounts a real read-only volume."""
    blocker = database.parent / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{blocker / 'app.db'}")
    monkeypatch.setenv("ADMIN_PASSWORD", "long enough pw")
    monkeypatch.setattr("app.server.serve", lambda _settings: pytest.fail("serve started"))
    with pytest.raises(SystemExit) as exited:
        cli.main(command)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"start-up error: DATABASE_URL: the SQLite database {blocker / 'app.db'}")
    assert "mount a writable volume" in err[0]
