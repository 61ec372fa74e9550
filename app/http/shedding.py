"""Load shedding: past `max_requests_in_flight` a worker answers 503 problem details at once.

uvicorn's own `--limit-concurrency` counts open connections (idle keep-alive ones included) and
answers a plain-text 503 with no Retry-After; it stays configured, higher, as the outer backstop
against connection floods. This middleware counts requests actually being handled, so a client
over the limit hears "retry in a second" in the API's error format instead of queueing until
its own timeout while the worker's memory and database pool queue grow.
"""

from __future__ import annotations

import time
import uuid

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from app.http.middleware import REQUEST_ID_HEADER, incoming_request_id
from app.http.problems import error_response
from app.observability.metrics import HTTP_SHED, InFlight

log = structlog.get_logger("app.shedding")

# Probes and the scrape stay answerable under overload: a liveness probe shed with 503 would get
# an overloaded, healthy pod restarted, which makes the overload worse.
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class LoadSheddingMiddleware:
    """The outermost middleware: it must answer before anything else is spent on the request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_in_flight: int,
        in_flight: InFlight,
        retry_after: int = 1,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = in_flight
        self.retry_after = str(retry_after)
        self.headers = headers or []
        self._shed_since_log = 0
        self._last_log = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counter = self.in_flight
        if counter.value >= self.max_in_flight and scope["path"] not in EXEMPT_PATHS:
            await self._shed(scope, receive, send)
            return
        counter.value += 1
        try:
            await self.app(scope, receive, send)
        finally:
            counter.value -= 1

    async def _shed(self, scope: Scope, receive: Receive, send: Send) -> None:
        HTTP_SHED.inc()
        # One log line per second at most: under overload a line per request would cost more CPU
        # than the 503 itself. The counter above carries the exact number.
        self._shed_since_log += 1
        now = time.monotonic()
        if now - self._last_log >= 1.0:
            log.warning("load_shed", shed=self._shed_since_log, max_in_flight=self.max_in_flight)
            self._shed_since_log = 0
            self._last_log = now
        path = scope.get("path", "")
        request_id = incoming_request_id(scope) or uuid.uuid4().hex
        # In the shape of the API asked (problem details, or the protocol's `{"error"}` under /v2).
        response = error_response(
            path,
            503,
            code="overloaded",
            detail="The server is at capacity; retry shortly.",
            instance=path,
            headers={"Retry-After": self.retry_after, REQUEST_ID_HEADER: request_id},
        )
        response.raw_headers.extend(self.headers)
        await response(scope, receive, send)
