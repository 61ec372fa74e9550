"""The domain errors: what services raise when a client should hear about a failure. Each carries
the HTTP status and a stable `code` it is rendered with (app.http.problems); no HTTP here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://fastapi-ml-service.dev/problems/"


class AppError(Exception):
    """A failure the client should hear about. Services raise these; one handler renders them.

    `code` becomes the problem `type` (a stable, documented identifier clients can switch on).
    """

    status: int = 500
    code: str = "internal-error"
    title: str = "Internal Server Error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        errors: Sequence[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}
        self.errors = list(errors) if errors is not None else None


class BadRequest(AppError):
    status, code, title = 400, "bad-request", "Bad Request"


class Unauthorized(AppError):
    status, code, title = 401, "unauthorized", "Unauthorized"

    def __init__(self, detail: str = "Not authenticated", **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(detail, **kwargs)


class Forbidden(AppError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(AppError):
    status, code, title = 404, "not-found", "Not Found"


class Conflict(AppError):
    status, code, title = 409, "conflict", "Conflict"


class PayloadTooLarge(AppError):
    status, code, title = 413, "payload-too-large", "Content Too Large"


class UnsupportedMediaType(AppError):
    status, code, title = 415, "unsupported-media-type", "Unsupported Media Type"


class ValidationFailed(AppError):
    status, code, title = 422, "validation-error", "Unprocessable Content"


class TooManyRequests(AppError):
    status, code, title = 429, "rate-limited", "Too Many Requests"


class BadGateway(AppError):
    status, code, title = 502, "bad-gateway", "Bad Gateway"


class ServiceUnavailable(AppError):
    status, code, title = 503, "service-unavailable", "Service Unavailable"


class GatewayTimeout(AppError):
    status, code, title = 504, "timeout", "Gateway Timeout"
