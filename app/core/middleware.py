"""Pure ASGI middleware: request id, access log and last-resort 500s; request body size limit."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.exceptions import problem_response

log = structlog.get_logger("app.access")
error_log = structlog.get_logger("app.error")

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContextMiddleware:
    """Gives every request an id, logs one access line, and turns any unhandled error into a 500.

    The incoming `X-Request-ID` is kept when well-formed (so a caller's id follows the request
    through the logs), replaced otherwise, and returned on every response, errors included.
    """

    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        header = (REQUEST_ID_HEADER.encode(), request_id.encode())
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
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # noqa: BLE001 - the last resort: any error becomes a logged, generic 500
            error_log.exception("unhandled_error", path=scope.get("path"))
            if not started:
                status = 500
                response = problem_response(
                    500,
                    detail=f"An unexpected error occurred; quote request id {request_id}.",
                    instance=scope.get("path"),
                )
                await response(scope, receive, send_with_id)
        finally:
            if self.access_log:
                _access_line(scope, status, time.perf_counter() - start, request_id)


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID_RE.match(text) else None
    return None


def _access_line(scope: Scope, status: int, duration: float, request_id: str) -> None:
    route = scope.get("route")
    state: dict[str, Any] = scope.get("state", {})
    log.info(
        "request",
        method=scope.get("method"),
        route=getattr(route, "path", None) or "unmatched",
        status=status,
        duration_ms=round(duration * 1000, 2),
        request_id=request_id,
        user_id=state.get("user_id"),
    )


class BodySizeLimitMiddleware:
    """413 for bodies over the limit, decided from Content-Length before anything is read, and
    enforced while streaming for chunked bodies, so an oversized body is never held in memory."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    await problem_response(
                        400, detail="Content-Length is not a number.", instance=scope.get("path")
                    )(scope, receive, send)
                    return
                if declared > self.max_bytes:
                    await self._too_large(scope, receive, send)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException, so the framework's body parsing lets it through to the
                    # one error handler instead of turning it into a generic 400.
                    raise HTTPException(413, detail=self._detail, headers={"Connection": "close"})
            return message

        await self.app(scope, limited_receive, send)

    @property
    def _detail(self) -> str:
        return f"The request body is larger than {self.max_bytes} bytes."

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await problem_response(
            413,
            detail=self._detail,
            instance=scope.get("path"),
            headers={"Connection": "close"},
        )(scope, receive, send)
