"""The SIGTERM flag of app.http.lifecycle: set at once, its log line written by the event loop."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys
import threading
from types import SimpleNamespace
from typing import Any, cast

import pytest

from app.core.logging import configure_logging
from app.http import lifecycle
from app.http.state import State


class SignalInsideAWrite(io.StringIO):
    """A stdout whose first write is interrupted by the signal, as when SIGTERM lands while the main
    thread is writing a log line (structlog's per-file lock held)."""

    def __init__(self, handler: Any) -> None:
        super().__init__()
        self.handler = handler
        self.fired = False

    def write(self, text: str) -> int:
        if not self.fired:
            self.fired = True
            self.handler(signal.SIGTERM, None)
        return super().write(text)


async def test_a_signal_during_a_log_write_neither_deadlocks_nor_loses_the_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 16: the handler used to log itself, waited for the lock the interrupted write held,
    and the server hung until SIGKILL."""
    configure_logging("INFO", json=True)
    state = SimpleNamespace(shutting_down=False)
    restore = lifecycle._flag_shutdown_on_signal(cast(State, state))
    try:
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        stdout = SignalInsideAWrite(handler)
        monkeypatch.setattr(sys, "stdout", stdout)
        # In a thread, so the old behaviour fails the test instead of hanging it.
        writer = threading.Thread(target=lambda: lifecycle.log.info("a request line"), daemon=True)
        writer.start()
        writer.join(timeout=5)
        assert not writer.is_alive(), "the signal handler deadlocked on the log write it interrupted"
        assert state.shutting_down
        await asyncio.sleep(0.05)  # the loop writes the handler's line
    finally:
        restore()
    events = [json.loads(line)["event"] for line in stdout.getvalue().splitlines()]
    assert events == ["a request line", "shutdown_requested"]
