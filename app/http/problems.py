"""The one error envelope: domain errors and every framework error rendered as RFC 9457 problems
(the Open Inference Protocol's `{"error"}` under /v2)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, cast

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import compile_path

from app.core.errors import (
    PROBLEM_CONTENT_TYPE,
    PROBLEM_TYPE_BASE,
    AppError,
    BadGateway,
    BadRequest,
    Conflict,
    Forbidden,
    GatewayTimeout,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)

log = structlog.get_logger(__name__)


_CODES_BY_STATUS: dict[int, type[AppError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        ValidationFailed,
        TooManyRequests,
        BadGateway,
        ServiceUnavailable,
        GatewayTimeout,
    )
}


def problem_body(
    status: int,
    *,
    code: str | None = None,
    title: str | None = None,
    detail: str | None = None,
    instance: str | None = None,
    errors: Sequence[dict[str, str]] | None = None,
) -> dict[str, Any]:
    known = _CODES_BY_STATUS.get(status)
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + (code or (known.code if known else f"http-{status}")),
        "title": title or (known.title if known else phrase),
        "status": status,
        "detail": detail or (known.title if known else phrase),
    }
    if instance is not None:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = list(errors)
    return body


def problem_response(
    status: int,
    *,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> Response:
    """A problem+json response. Built by hand: it is on the error path and needs no validation."""
    content = json.dumps(problem_body(status, **fields), separators=(",", ":")).encode()
    return Response(content, status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE)


# The Open Inference Protocol (KServe V2) has its own error shape, `{"error": "..."}`: requests
# under this prefix get it; everything else gets RFC 9457 problem details.
OIP_PREFIX = "/v2"


def _error_response(
    request: Request, status: int, *, headers: dict[str, str] | None = None, **fields: Any
) -> Response:
    return error_response(request.url.path, status, headers=headers, **fields)


def error_response(
    path: str, status: int, *, headers: dict[str, str] | None = None, **fields: Any
) -> Response:
    """The error answer for a request to `path`, in the shape its API promises: the protocol's
    `{"error"}` under /v2, problem details elsewhere. Middleware that answers before a route
    runs (body and header limits, trusted hosts, the last-resort 500) uses it too, so a client
    of either API parses one shape whatever refused it."""
    if path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/"):
        message = fields.get("detail") or fields.get("title") or HTTPStatus(status).phrase
        errors = fields.get("errors")
        if errors:
            message += " " + "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        content = json.dumps({"error": message}, separators=(",", ":")).encode()
        return Response(content, status_code=status, headers=headers, media_type="application/json")
    return problem_response(status, headers=headers, **fields)


def _field_name(loc: Sequence[int | str]) -> str:
    """`("body", "rows", 0, "x")` -> `rows.0.x`: the public path a client sent, without the source."""
    parts = list(loc)
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        parts = parts[1:]
    return ".".join(str(part) for part in parts) or "body"


# A body can hold thousands of bad fields; listing every one would let a 1 MiB request buy a
# response several times larger. The first few tell a client what to fix.
MAX_REPORTED_ERRORS = 20


def validation_errors(raw: Sequence[Any]) -> list[dict[str, str]]:
    return [
        {"field": _field_name(err.get("loc", ())), "message": str(err.get("msg", ""))}
        for err in raw[:MAX_REPORTED_ERRORS]
    ]


def media_type(request: Request) -> str:
    """The request's media type, lower-cased and without parameters (media types are
    case-insensitive: `Application/JSON; charset=UTF-8` is `application/json`)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _is_json_request(request: Request) -> bool:
    content_type = media_type(request)
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


async def app_error_handler(request: Request, exc: Exception) -> Response:
    exc = cast(AppError, exc)
    return _error_response(
        request,
        exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        instance=request.url.path,
        errors=exc.errors,
        headers=exc.headers,
    )


async def _validation_handler(request: Request, exc: Exception) -> Response:
    exc = cast(RequestValidationError, exc)
    raw = exc.errors()
    body_errors = [err for err in raw if err.get("loc", ("",))[0] == "body"]
    if any(err.get("type") == "json_invalid" for err in body_errors):
        return _error_response(
            request,
            400,
            code="malformed-json",
            title="Bad Request",
            detail="The request body is not valid JSON.",
            instance=request.url.path,
        )
    if body_errors and request.headers.get("content-type") and not _is_json_request(request):
        route = request.scope.get("route")
        body_field = getattr(route, "body_field", None)
        expects_form = body_field is not None and type(getattr(body_field, "field_info", None)).__name__ in {
            "Form",
            "File",
        }
        if not expects_form:
            return _error_response(
                request, 415, detail="Send the request body as application/json.", instance=request.url.path
            )
    shown = "" if len(raw) <= MAX_REPORTED_ERRORS else f" (the first {MAX_REPORTED_ERRORS} of {len(raw)})"
    return _error_response(
        request,
        422,
        detail=f"The request has invalid fields; see errors{shown}.",
        instance=request.url.path,
        errors=validation_errors(raw),
    )


async def _http_exception_handler(request: Request, exc: Exception) -> Response:
    exc = cast(StarletteHTTPException, exc)
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) else None
    if status == 404 and detail == "Not Found":
        detail = f"No resource at {request.url.path}."
    headers = dict(exc.headers) if exc.headers else None  # e.g. Allow on a 405
    if status == 405:
        detail = f"{request.method} is not allowed on {request.url.path}."
        headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    return _error_response(request, status, detail=detail, instance=request.url.path, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """The methods of the resource at this path. Starlette's 405 names only the first route that
    matches, but GET and PATCH on one URL are two routes here. The resource is the first route
    template that matches (the one a request would be routed to: `/users/me`, not
    `/users/{user_id}`), and `Allow` lists the methods of every route with that template."""
    path = request.url.path
    routes = [(c.path, c.methods) for c in iter_route_contexts(request.app.routes) if c.path and c.methods]
    template = next((t for t, _ in routes if compile_path(t)[0].match(path)), None)
    return sorted({method for t, methods in routes if t == template for method in methods})


_SQLITE_SCHEMA_ERRORS = ("no such table", "no such column")


def is_database_outage(exc: BaseException) -> bool:
    """True for errors that mean "the database cannot be reached now", not "this query is wrong"."""
    if isinstance(exc, sa_exc.TimeoutError | OSError | ConnectionError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        # SQLite reports a missing table as an OperationalError too; PostgreSQL as a ProgrammingError.
        # Both mean "not migrated", not "unreachable".
        if str(exc.orig).startswith(_SQLITE_SCHEMA_ERRORS):
            return False
        return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    return False


async def _database_error_handler(request: Request, exc: Exception) -> Response:
    if not is_database_outage(exc):
        raise exc
    log.warning("database_unavailable", error=type(exc).__name__)
    return _error_response(
        request,
        503,
        detail="The database is unavailable; retry shortly.",
        instance=request.url.path,
        headers={"Retry-After": "1"},
    )


def install_exception_handlers(app: FastAPI) -> None:
    """Every error the app can raise, mapped once. Unhandled exceptions: see RequestContextMiddleware."""
    app.add_exception_handler(sa_exc.SQLAlchemyError, _database_error_handler)
    app.add_exception_handler(OSError, _database_error_handler)
    app.add_exception_handler(AppError, app_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
