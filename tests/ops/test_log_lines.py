"""Several worker processes share one stdout: each log line must reach it in one write.

Under PYTHONUNBUFFERED=1 (set in the image) every write() on sys.stdout is a write(2) of its own;
`print(line)` makes two (the line, then "\\n"), and two workers writing at once can merge their
lines into one invalid JSON line. structlog must hand each whole line to the stream at once.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import structlog

from app.core.config import Settings
from app.core.logging import configure_logging
from app.main import create_app
from tests.conftest import LogLines
from tests.faults.server import free_port, server_env, start_server


class RecordingStdout(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)


def test_each_log_line_is_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    stdout = RecordingStdout()
    monkeypatch.setattr("sys.stdout", stdout)
    configure_logging("INFO", json=True)
    try:
        structlog.get_logger("app.test.lines").info("structlog_line", n=1)
        logging.getLogger("uvicorn.error").warning("stdlib line")
    finally:
        structlog.reset_defaults()
        configure_logging("INFO", json=True)  # back on the real stdout for the tests after this one
    assert len(stdout.writes) == 2, stdout.writes
    for text in stdout.writes:
        assert text.endswith("\n")
        json.loads(text)


# The names docs/deployment.md promises are redacted, spelled as code would pass them.
SECRET_FIELDS = (
    "password",
    "new_password",
    "current_password",
    "hashed_password",
    "token",
    "access_token",
    "refresh_token",
    "authorization",
    "secret_key",
    "cookie",
)


async def test_fields_named_like_secrets_are_redacted_by_key_name(
    settings: Settings, log_lines: LogLines
) -> None:
    """No code logs a secret today; the processor is what keeps a future `log.info(...,
    token=...)` or a request-scoped binding from writing one. Logged through the app's own
    logging set-up, both ways app code adds fields: call arguments and bound context."""
    create_app(settings)  # configures logging as the service does
    log_lines()  # drop what start-up wrote
    values = {name: f"leaked-{name}-value" for name in SECRET_FIELDS}
    structlog.contextvars.bind_contextvars(authorization="Bearer leaked-bound-token", request_id="r-1")
    try:
        structlog.get_logger("app").warning("carrying_secrets", user_id=7, **values)
    finally:
        structlog.contextvars.clear_contextvars()
    (line,) = [line for line in log_lines() if line.get("event") == "carrying_secrets"]
    assert {name: line[name] for name in SECRET_FIELDS} == dict.fromkeys(SECRET_FIELDS, "[redacted]")
    assert line["user_id"] == 7  # other fields are kept as they are
    assert line["request_id"] == "r-1"
    assert "leaked" not in json.dumps(line)


async def test_secrets_are_redacted_however_they_are_spelled_and_wherever_they_nest(
    settings: Settings, log_lines: LogLines
) -> None:
    """Header spellings (`Authorization`, `X-API-Key`, `Set-Cookie`) and secrets inside a mapping a
    line carries (a dict of headers, a list of bodies) are redacted too."""
    create_app(settings)
    log_lines()
    structlog.get_logger("app").warning(
        "nested_secrets",
        Authorization="Bearer leaked-1",
        headers={"X-API-Key": "leaked-2", "Set-Cookie": "leaked-3", "accept": "application/json"},
        bodies=[{"email": "a@example.com", "password": "leaked-4"}],
    )
    (line,) = [line for line in log_lines() if line.get("event") == "nested_secrets"]
    assert "leaked" not in json.dumps(line)
    assert line["headers"]["accept"] == "application/json"
    assert line["bodies"] == [{"email": "a@example.com", "password": "[redacted]"}]


def test_start_up_migration_logs_its_upgrades_but_not_alembics_plugin_lines(tmp_path: Path) -> None:
    """`make run`'s start-up on an empty SQLite file migrates it: alembic's "Running upgrade" lines
    are useful and stay; its seven "setup plugin alembic.autogenerate..." lines are noise and go.
    A real process: alembic announces its plugins once, when first imported."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    env = server_env(database_url, free_port(), LOG_LEVEL="INFO", AUTO_MIGRATE="true")
    server = start_server(env, tmp_path / "server.log")
    server.stop()
    log = server.log_path.read_text()
    events = [str(json.loads(line).get("event", "")) for line in log.splitlines() if line.strip()]
    assert any(event.startswith("Running upgrade") for event in events), log[-3000:]
    assert not [event for event in events if "setup plugin" in event], log[-3000:]
