"""The operations layer of the app, wired by app.main: load shedding, security headers, trusted
hosts, CORS, metrics, rate limits, tracing, and the shutdown flag /readyz reads."""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import re
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager, suppress
from types import FrameType
from typing import Any

import structlog
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.core.security import InvalidAccessToken
from app.http.middleware import (
    ProblemCORSMiddleware,
    RequestContextMiddleware,
    SecurityHeaders,
    TrustedHostMiddleware,
)
from app.http.ratelimit import Limits, refused_token_handler
from app.http.shedding import LoadSheddingMiddleware
from app.observability import metrics, tracing

log = structlog.get_logger("app")

DOCS_PATHS = frozenset({"/docs", "/redoc"})
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def script_hashes(pages: Iterable[str]) -> tuple[str, ...]:
    """CSP sha256 sources of the inline scripts of these HTML pages."""
    return tuple(
        base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        for page in pages
        for script in _INLINE_SCRIPT.findall(page)
    )


def install(app: FastAPI, settings: Settings, *, docs_pages: Iterable[str] = ()) -> None:
    """Middleware and /metrics. (The per-user limit is counted by the authentication dependency,
    `app.api.deps.get_principal`, once it has decoded the access token.)"""
    security = SecurityHeaders(
        hsts_max_age=settings.hsts_max_age,
        docs_paths=DOCS_PATHS if settings.show_docs else frozenset(),
        docs_script_hashes=script_hashes(docs_pages),
    )
    # Inner to outer: CORS answers preflights, trusted hosts refuse foreign Host headers, the
    # request context adds ids, headers, metrics and the access line to all of that, and shedding
    # answers before anything at all is spent.
    if settings.cors_origins:
        app.add_middleware(
            ProblemCORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "X-Total-Count", "Retry-After"],
            max_age=600,
        )
    if "*" not in settings.trusted_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed=settings.trusted_hosts)
    app.add_middleware(
        RequestContextMiddleware,
        access_log=settings.access_log,
        metrics=settings.metrics_enabled,
        security_headers=security,
        max_headers=settings.max_request_headers,
        max_header_bytes=settings.max_request_header_bytes,
        refuse_preflights=not settings.cors_origins,
    )
    in_flight = metrics.InFlight()
    app.state.in_flight = in_flight
    app.add_middleware(
        LoadSheddingMiddleware,
        max_in_flight=settings.max_requests_in_flight,
        in_flight=in_flight,
        headers=security.api,
    )
    # A token the database refuses gives back what it was counted against its user (ratelimit).
    app.add_exception_handler(InvalidAccessToken, refused_token_handler)
    if settings.metrics_enabled:
        app.add_route("/metrics", metrics.metrics_endpoint, methods=["GET"], include_in_schema=False)


@asynccontextmanager
async def running(
    app: FastAPI,
    engine: AsyncEngine,
    *,
    queue_depths: Callable[[], Mapping[str, int]] | None = None,
) -> AsyncIterator[None]:
    """What runs beside the app from start-up to shutdown: rate-limit storage, the metrics
    sampler, tracing, and the SIGTERM flag that turns /readyz 503 while requests drain."""
    settings: Settings = app.state.settings
    limits = Limits(settings)
    app.state.rate_limits = limits
    sampler = metrics.Sampler(app.state.in_flight, engine.pool, settings.db_pool_size)
    if queue_depths is not None:
        sampler.queue_depth_sources.append(queue_depths)
    app.state.metrics_sampler = sampler
    tracer: tracing.Tracing | None = getattr(app.state, "tracing", None)
    if tracer is not None:
        tracer.instrument(engine)
    restore = _flag_shutdown_on_signal(app)
    restore_gc = _settle_heap(settings)
    task = None
    if metrics.multiprocess_dir() is not None:
        # Other workers' scrapes read this worker's gauges from its files: keep them fresh.
        task = asyncio.get_running_loop().create_task(sampler.run(), name="metrics-sampler")
    try:
        yield
    finally:
        app.state.shutting_down = True
        restore()
        restore_gc()
        if task is not None:
            task.cancel()
            with suppress(BaseException):
                await task
        sampler.close()
        await limits.close()
        if tracer is not None:
            tracer.shutdown()


def _settle_heap(settings: Settings) -> Callable[[], None]:
    """Garbage collection tuned for a server whose start-up leaves ~150k long-lived objects (routes,
    models, SQLAlchemy's and pydantic's structures): frozen, full collections no longer walk them;
    a larger young generation makes collections rarer. With Python's defaults, GET item at 64
    connections had a p99 4.4x its p50 (collection pauses) against 1.2x (docs/performance.md).
    Undone at shutdown, so an app started and stopped in one process (the tests) leaves no
    frozen objects behind."""
    threshold = gc.get_threshold()
    if settings.gc_gen0_threshold:
        gc.set_threshold(settings.gc_gen0_threshold, *threshold[1:])
    if settings.gc_freeze:
        gc.collect()
        gc.freeze()

    def restore() -> None:
        gc.set_threshold(*threshold)
        if settings.gc_freeze:
            gc.unfreeze()

    return restore


def _flag_shutdown_on_signal(app: FastAPI) -> Callable[[], None]:
    """Chain onto uvicorn's SIGTERM/SIGINT handlers: /readyz answers 503 from the signal on, while
    uvicorn drains, not only once the lifespan ends. A no-op outside the main thread (tests)."""
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        if not getattr(app.state, "shutting_down", False):
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
        app.state.shutting_down = True
        chained = previous.get(signum)
        if callable(chained):
            chained(signum, frame)

    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[signum] = signal.getsignal(signum)
            signal.signal(signum, handler)
        except ValueError:  # not the main thread
            previous.pop(signum, None)

    def restore() -> None:
        for signum, old in previous.items():
            with suppress(ValueError, TypeError):
                if signal.getsignal(signum) is handler:
                    signal.signal(signum, old)

    return restore
