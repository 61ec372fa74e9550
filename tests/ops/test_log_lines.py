"""Several worker processes share one stdout: each log line must reach it in one write.

Under PYTHONUNBUFFERED=1 (set in the image) every write() on sys.stdout is a write(2) of its own;
`print(line)` makes two (the line, then "\\n"), and two workers writing at once can merge their
lines into one invalid JSON line. structlog must hand each whole line to the stream at once.
"""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from app.core.logging import configure_logging


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
