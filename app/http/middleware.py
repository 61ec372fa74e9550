"""Pure ASGI middleware: request id, security headers, metrics, access log and last-resort 500s;
request body size limit; trusted hosts; CORS with problem-details refusals.

No BaseHTTPMiddleware: each layer here is a plain ASGI callable, and the per-request work of
request id, security headers, metrics and access log is done in one layer, one `send` wrapper."""

from __future__ import annotations

import base64
import hashlib
import re
import time
import uuid
from collections.abc import Iterable
from itertools import chain
from typing import Any

import structlog
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.problems import error_response, problem_response
from app.observability.metrics import REQUESTS

log = structlog.get_logger("app.access")
error_log = structlog.get_logger("app.error")

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


# Swagger UI and ReDoc run scripts and styles from this origin only; their one inline script is
# allowed by its hash (see app.main), inline styles are needed by both.
DOCS_CSP_TEMPLATE = (
    "default-src 'self'; script-src 'self'{script_hashes}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# JSON responses are never rendered as documents: nothing may load, nothing may frame them.
API_CSP = "default-src 'none'; frame-ancestors 'none'"


class SecurityHeaders:
    """The headers every response gets, prepared once: HSTS only on https requests (the scheme as
    uvicorn reports it after trusted proxy headers), a looser CSP on the docs pages."""

    def __init__(
        self,
        *,
        hsts_max_age: int = 31_536_000,
        docs_paths: frozenset[str] = frozenset(),
        docs_script_hashes: tuple[str, ...] = (),
    ) -> None:
        common = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
        ]
        hashes = "".join(f" 'sha256-{h}'" for h in docs_script_hashes)
        docs_csp = DOCS_CSP_TEMPLATE.format(script_hashes=hashes).encode()
        hsts = [(b"strict-transport-security", f"max-age={hsts_max_age}; includeSubDomains".encode())]
        if not hsts_max_age:
            hsts = []
        self.docs_paths = docs_paths
        self.api = [*common, (b"content-security-policy", API_CSP.encode())]
        self.docs = [*common, (b"content-security-policy", docs_csp)]
        self.api_https = self.api + hsts
        self.docs_https = self.docs + hsts

    def for_scope(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        https = scope.get("scheme") == "https"
        if scope["path"] in self.docs_paths:
            return self.docs_https if https else self.docs
        return self.api_https if https else self.api


class RequestContextMiddleware:
    """Gives every request an id, security headers, a metrics record and one access line, and
    turns any unhandled error into a 500.

    The incoming `X-Request-ID` is kept when well-formed (so a caller's id follows the request
    through the logs), replaced otherwise, and returned on every response, errors included.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        access_log: bool = True,
        metrics: bool = True,
        security_headers: SecurityHeaders | None = None,
        max_headers: int = 100,
        max_header_bytes: int = 32_768,
        refuse_preflights: bool = False,
    ) -> None:
        self.app = app
        self.access_log = access_log
        self.metrics = metrics
        self.security_headers = security_headers
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        # No CORS origins configured: no CORS layer is installed, so a preflight would reach the
        # router and get a bare 405. It is refused here instead, in the pass every request makes.
        self.refuse_preflights = refuse_preflights

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope) or uuid.uuid4().hex
        extra = [(REQUEST_ID_HEADER.encode(), request_id.encode())]
        if self.security_headers is not None:
            extra += self.security_headers.for_scope(scope)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send_with_id)
                return
            await self.app(scope, receive, send_with_id)
        except Exception:  # noqa: BLE001 - the last resort: any error becomes a logged, generic 500
            error_log.exception("unhandled_error", path=scope.get("path"))
            if not started:
                status = 500
                response = error_response(
                    scope.get("path", ""),
                    500,
                    detail=f"An unexpected error occurred; quote request id {request_id}.",
                    instance=scope.get("path"),
                )
                await response(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - start
            route = _route_template(scope)
            if self.metrics:
                REQUESTS.record(scope["method"], route, status, duration)
            if self.access_log:
                _access_line(scope, route, status, duration, request_id)

    def _refusal(self, scope: Scope) -> Response | None:
        """431 for too many or too large headers (uvicorn's httptools parser has no limit of its
        own): a length check and one sum. 400 for a CORS preflight when no origin is allowed."""
        headers = scope["headers"]
        if len(headers) > self.max_headers:
            return _headers_too_large(scope, f"more than {self.max_headers} header fields")
        if sum(map(len, chain.from_iterable(headers))) > self.max_header_bytes:
            return _headers_too_large(scope, f"header fields larger than {self.max_header_bytes} bytes")
        if self.refuse_preflights and scope["method"] == "OPTIONS":
            request_headers = Headers(scope=scope)
            if "origin" in request_headers and "access-control-request-method" in request_headers:
                return refused_preflight("Disallowed CORS origin", {"Vary": "Origin"}, scope)
        return None


def _headers_too_large(scope: Scope, what: str) -> Response:
    return error_response(
        scope.get("path", ""),
        431,
        detail=f"The request has {what}.",
        instance=scope.get("path"),
        headers={"Connection": "close"},
    )


def refused_preflight(reason: str, headers: dict[str, str], scope: Scope | None = None) -> Response:
    """The one answer to a refused CORS preflight: 400 problem details saying why."""
    return problem_response(
        400,
        detail=f"CORS preflight refused: {reason}.",
        headers=headers,
        instance=None if scope is None else scope.get("path"),
    )


def incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID_RE.match(text) else None
    return None


def _route_template(scope: Scope) -> str:
    """The route template ("/api/v1/items/{item_id}"), never the raw path: metric labels and log
    values stay few. FastAPI puts its API routes in scope["route"]; plain Starlette routes
    (/openapi.json, /metrics) and mounts (/static/docs) only leave their endpoint behind."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "<unmatched>"))
    if "endpoint" not in scope:
        return "<unmatched>"
    app_root = scope.get("app_root_path")
    if app_root is not None and scope.get("root_path", "") != app_root:
        return str(scope["root_path"])[len(app_root) :] + "/{path}"
    # A plain route without parameters: its path is its template.
    return "<unmatched>" if scope.get("path_params") else str(scope["path"])


def _access_line(scope: Scope, route: str, status: int, duration: float, request_id: str) -> None:
    state: dict[str, Any] = scope.get("state", {})
    # Which of the user's API keys made the request (its id, never the key), when one did.
    key = {"api_key_id": state["api_key_id"]} if "api_key_id" in state else {}
    log.info(
        "request",
        method=scope.get("method"),
        route=route,
        status=status,
        duration_ms=round(duration * 1000, 2),
        request_id=request_id,
        user_id=state.get("user_id"),
        **key,
    )


class BodySizeLimitMiddleware:
    """413 for bodies over the limit, decided from Content-Length before anything is read, and
    enforced while streaming for chunked bodies, so an oversized body is never held in memory.
    `larger`: POST paths with a limit of their own (a job's upload, streamed into the database by
    its route, which enforces its exact limit itself)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, larger: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.larger = larger or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.max_bytes
        if self.larger and scope.get("method") == "POST":
            max_bytes = self.larger.get(scope.get("path", ""), max_bytes)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    await error_response(
                        scope.get("path", ""),
                        400,
                        detail="Content-Length is not a number.",
                        instance=scope.get("path"),
                    )(scope, receive, send)
                    return
                if declared > max_bytes:
                    await self._too_large(scope, receive, send, max_bytes)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    # An HTTPException, so the framework's body parsing lets it through to the
                    # one error handler instead of turning it into a generic 400.
                    raise HTTPException(413, detail=self._detail(max_bytes), headers={"Connection": "close"})
            return message

        await self.app(scope, limited_receive, send)

    @staticmethod
    def _detail(max_bytes: int) -> str:
        return f"The request body is larger than {max_bytes} bytes."

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
        await error_response(
            scope.get("path", ""),
            413,
            detail=self._detail(max_bytes),
            instance=scope.get("path"),
            headers={"Connection": "close"},
        )(scope, receive, send)


class TrustedHostMiddleware:
    """400 problem details for a Host header outside `allowed` ("*" allows any host; "*.example.com"
    allows subdomains). Starlette's own version answers plain text."""

    def __init__(self, app: ASGIApp, *, allowed: list[str]) -> None:
        self.app = app
        self.any = "*" in allowed
        self.exact = frozenset(host.lower() for host in allowed if not host.startswith("*."))
        self.suffixes = tuple(host[1:].lower() for host in allowed if host.startswith("*."))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any or scope["type"] not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host", "").lower()
        # Drop the port; an IPv6 literal keeps its brackets: "[::1]:8000" -> "[::1]".
        host = host.split("]", 1)[0] + "]" if host.startswith("[") else host.split(":", 1)[0]
        if host in self.exact or (self.suffixes and host.endswith(self.suffixes)):
            await self.app(scope, receive, send)
            return
        await error_response(
            scope.get("path", ""),
            400,
            detail="The Host header is not one this service answers to.",
            instance=scope.get("path"),
        )(scope, receive, send)


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORS handling, with a refused preflight answered as problem details."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        dropped = {"content-type", "content-length"}
        headers = {k: v for k, v in response.headers.items() if k.lower() not in dropped}
        return refused_preflight(bytes(response.body).decode(), headers)


DOCS_PATHS = frozenset({"/docs", "/redoc"})
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def script_hashes(pages: Iterable[str]) -> tuple[str, ...]:
    """CSP sha256 sources of the inline scripts of these HTML pages."""
    return tuple(
        base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        for page in pages
        for script in _INLINE_SCRIPT.findall(page)
    )
