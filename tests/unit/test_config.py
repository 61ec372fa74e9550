"""Settings: environment-driven, safe in production, a generated key in development."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.config import Settings
from tests.conftest import TEST_SECRET_KEY

ROOT = Path(__file__).resolve().parents[2]
STRONG_KEY = "Xq3v9ZpL2mT8rW4yB7nK1sD6fH0jG5cA"


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable of the developer's shell or `.env` of the repository leaks into these tests."""
    for name in list(os.environ):
        if name.upper() in {field.upper() for field in Settings.model_fields}:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


# --- production refuses unsafe settings ---


@pytest.mark.parametrize(
    "key",
    [
        None,
        "",
        "short-key",
        "x" * 31,
        "x" * 64,  # long, but one character repeated
        "abababababababababababababababab",
        "change-me-to-a-long-random-string-please",
        "CHANGEME" + STRONG_KEY,
    ],
)
def test_production_refuses_a_missing_short_or_weak_secret_key(key: str | None) -> None:
    with pytest.raises(ValidationError) as caught:
        _settings(environment="production", secret_key=key)
    message = str(caught.value)
    assert "SECRET_KEY" in message
    if key:
        assert key not in message, "the error repeats the key"


def test_production_accepts_a_strong_key() -> None:
    settings = _settings(environment="production", secret_key=STRONG_KEY)
    assert settings.signing_key() == (STRONG_KEY, None)
    assert not settings.show_docs


def test_production_refuses_password_hashing_below_owasp_minimum() -> None:
    with pytest.raises(ValidationError, match="PASSWORD_HASH_MEMORY_KIB"):
        _settings(environment="production", secret_key=STRONG_KEY, password_hash_memory_kib=1024)
    with pytest.raises(ValidationError, match="PASSWORD_HASH_TIME_COST"):
        _settings(environment="production", secret_key=STRONG_KEY, password_hash_time_cost=1)


def test_production_defaults_meet_owasp_minimum() -> None:
    settings = _settings(environment="production", secret_key=STRONG_KEY)
    assert settings.password_hash_memory_kib >= 19_456
    assert settings.password_hash_time_cost >= 2
    assert settings.password_hash_parallelism >= 1


# --- the environment and .env ---


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u:p@db/app")
    monkeypatch.setenv("SECRET_KEY", TEST_SECRET_KEY)
    monkeypatch.setenv("DB_POOL_SIZE", "7")
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("ACCESS_TOKEN_EXPIRE_SECONDS", "120")
    settings = Settings()
    assert settings.database_url == "postgresql+asyncpg://u:p@db/app"
    assert settings.db_pool_size == 7
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.access_token_expire_seconds == 120
    assert not settings.is_sqlite
    assert not settings.migrate_on_startup


def test_settings_read_a_dot_env_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PORT=9123\nLOG_LEVEL=WARNING\n")
    settings = Settings()
    assert settings.port == 9123
    assert settings.log_level == "WARNING"


def test_the_environment_wins_over_dot_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("PORT=9123\n")
    monkeypatch.setenv("PORT", "9200")
    assert Settings().port == 9200


@pytest.mark.parametrize(
    ("name", "value"),
    [("PORT", "0"), ("ACCESS_TOKEN_EXPIRE_SECONDS", "5"), ("ENVIRONMENT", "staging"), ("DB_POOL_SIZE", "x")],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_development_defaults(tmp_path: Path) -> None:
    settings = _settings(dev_secret_key_file=tmp_path / "key")
    assert settings.environment == "development"
    assert settings.is_sqlite
    assert settings.migrate_on_startup
    assert settings.show_docs
    assert settings.database_url.endswith("/data/app.db")
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.max_request_body_bytes == 1_048_576


# --- development key ---


def test_development_generates_a_key_once_and_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "data" / ".dev-secret-key"
    first = _settings(dev_secret_key_file=path)
    key, source = first.signing_key()
    assert source == str(path)
    assert path.read_text().strip() == key
    assert len(key) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Another process (a restart, another worker) uses the same key.
    again, _ = _settings(dev_secret_key_file=path).signing_key()
    assert again == key
    # Asked twice, the same settings object does not generate anew either.
    assert first.signing_key()[0] == key


def test_an_explicit_key_is_used_and_no_file_is_written(tmp_path: Path) -> None:
    path = tmp_path / ".dev-secret-key"
    assert _settings(secret_key=TEST_SECRET_KEY, dev_secret_key_file=path).signing_key() == (
        TEST_SECRET_KEY,
        None,
    )
    assert not path.exists()


# --- the command line refuses to start with one line ---


def _run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    minimal = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=tmp_path,
        env=minimal,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("key", [None, "short", "change-me-change-me-change-me-change-me"])
def test_serve_in_production_without_a_strong_key_exits_with_one_line(
    tmp_path: Path, key: str | None
) -> None:
    env = {"ENVIRONMENT": "production", "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"}
    if key is not None:
        env["SECRET_KEY"] = key
    result = _run_cli(tmp_path, "serve", **env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "SECRET_KEY" in lines[0]
    assert "Traceback" not in result.stderr
    if key:
        assert key not in result.stderr
    assert not (tmp_path / "app.db").exists(), "it did something before refusing"


def test_a_configuration_error_never_quotes_the_secret_key() -> None:
    """Another setting is wrong in production: the error (a traceback, a log line) shows no key."""
    with pytest.raises(ValidationError) as caught:
        _settings(environment="production", secret_key=STRONG_KEY, password_hash_time_cost=1)
    assert STRONG_KEY[-8:] not in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        _settings(secret_key=STRONG_KEY, port="not a port")
    assert STRONG_KEY[-8:] not in str(caught.value)
