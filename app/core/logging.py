"""structlog set-up: JSON lines (or console lines in development) carrying the request id."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO, cast

import structlog

# Keys whose values must never reach a log line, whatever code logs them.
_SECRET_KEYS = frozenset(
    {
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
        "set_cookie",
        "api_key",
        "x_api_key",
    }
)


def _is_secret(key: object) -> bool:
    # As headers spell them too: `Authorization`, `X-API-Key`, `Set-Cookie`.
    return isinstance(key, str) and key.lower().replace("-", "_") in _SECRET_KEYS


def _redacted(value: Any) -> Any:
    """`value` with every secret-named key of every mapping in it (nested too) redacted."""
    if isinstance(value, dict):
        return {k: "[redacted]" if _is_secret(k) else _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    return value


def _redact(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in event.items():
        if _is_secret(key):
            event[key] = "[redacted]"
        elif isinstance(value, dict | list | tuple):
            event[key] = _redacted(value)
    return event


class WholeLines:
    """A text stream handing each complete line to the current `sys.stdout` in one write.

    structlog's PrintLogger prints the line and then "\\n": with PYTHONUNBUFFERED=1 (as in the
    image) those are two write(2) calls, and workers sharing one stdout could merge their lines.
    PrintLogger holds one lock per file object, so lines from threads never mix in here.

    `sys.stdout` is looked up at each write, not kept: loggers are cached on first use, and one
    holding a replaced stdout (a test capturing output) would later write to a closed stream.
    """

    def __init__(self) -> None:
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if self._pending.endswith("\n"):
            sys.stdout.write(self._pending)
            self._pending = ""
        return len(text)

    def flush(self) -> None:
        sys.stdout.flush()


def configure_logging(level: str = "INFO", *, json: bool = True) -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info if json else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(cast(TextIO, WholeLines())),
        cache_logger_on_first_use=True,
    )
    # Route the standard library's records (uvicorn, sqlalchemy, alembic) through the same renderer.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Our middleware writes the access line (with route template and request id); uvicorn's would
    # be a second, poorer copy.
    logging.getLogger("uvicorn.access").disabled = True
    # Alembic announces each of its autogenerate plugins ("setup plugin alembic.autogenerate...",
    # seven INFO lines) whenever it loads, on every start-up that migrates; its "Running upgrade"
    # lines (alembic.runtime.migration) stay.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # httpx logs every request at INFO: for remote models (app.ml.remote) that is a line per batch
    # and per readiness probe; failures are logged by the model layer itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
