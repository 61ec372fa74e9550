"""Rate limits (the `limits` library): shared through Redis when REDIS_URL is set, in-process otherwise.

- Log-in and registration: per client address and per account email, each endpoint counted
  on its own (`rate_limit_auth_per_address`, `rate_limit_auth_per_account`).
- Every authenticated request: per user (`rate_limit_per_user`), counted once its access token is
  correctly signed and unexpired. A token the database then refuses (its login ended, its user was
  deactivated or deleted) gives that request back to its user and is remembered by this process:
  from then on it is counted under a key of its own (the token's), never its user's, and answered
  401 without a query (429 once it is over the same number). Whoever holds a logged-out token
  cannot spend its owner's allowance.

A refused request gets 429 problem details with `Retry-After`. If Redis cannot be reached the
request is still served: the check falls back to this process's own counters (limits hold per
process instead of per fleet), a warning is logged once per outage and
`rate_limit_storage_errors_total` counts every failed check. Redis is tried again after
`redis_retry_interval` seconds, so the service recovers by itself when Redis returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response
from limits import RateLimitItem

from app.core.emails import canonical_email
from app.core.errors import TooManyRequests
from app.core.security import AccessClaims, InvalidAccessToken
from app.http.limiter import Limits
from app.http.problems import app_error_handler, media_type
from app.http.state import state_of
from app.observability.metrics import RATE_LIMITED


def _refuse(limit: str, wait: int, what: str) -> TooManyRequests:
    RATE_LIMITED.labels(limit).inc()
    return TooManyRequests(f"Too many {what}; retry in {wait} s.", headers={"Retry-After": str(wait)})


def client_address(request: Request) -> str:
    # uvicorn has already replaced it with X-Forwarded-For's client when the peer is a trusted proxy.
    return request.client.host if request.client else "unknown"


def account_key(email: str) -> str:
    # One key whichever form of the address was typed (full-width, punycode); Redis holds a digest,
    # not the address itself.
    return hashlib.sha256(canonical_email(email).encode()).hexdigest()[:32]


def auth_rate_limit(endpoint: str) -> Callable[[Request], Awaitable[None]]:
    """A route dependency limiting `endpoint` ("login", "register") per address and per account.

    It runs after FastAPI has parsed the body (form or JSON), so reading it here costs nothing.
    """

    async def limit(request: Request) -> None:
        limits = state_of(request).resources.limits
        if not limits.enabled:
            return
        if limits.auth_per_address is not None:
            wait = await limits.hit(endpoint + ":address", limits.auth_per_address, client_address(request))
            if wait is not None:
                raise _refuse(f"{endpoint}_address", wait, f"{endpoint} attempts from this address")
        email = await _account(request)
        if email and limits.auth_per_account is not None:
            wait = await limits.hit(endpoint + ":account", limits.auth_per_account, account_key(email))
            if wait is not None:
                raise _refuse(f"{endpoint}_account", wait, f"{endpoint} attempts for this account")

    limit.__name__ = f"{endpoint}_rate_limit"
    return limit


async def _account(request: Request) -> str | None:
    if media_type(request) in {"application/x-www-form-urlencoded", "multipart/form-data"}:
        value = (await request.form()).get("username")
    else:
        try:
            body = await request.json()
        except ValueError:
            return None
        value = body.get("email") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


async def limit_user(request: Request, claims: AccessClaims) -> None:
    """The per-user limit, counted for every request whose access token is well-formed, correctly
    signed and unexpired (so nobody can spend another user's allowance with a forged `sub`), before
    the token is checked against the database: an over-limit caller costs no query. Should the
    database then refuse the token, `refused_token_handler` gives the request back.

    A token this process has seen refused is counted under its own key instead and answered 401
    here, before anything else is spent.

    Called by the authentication dependency (`app.api.deps.get_caller`) right after it has
    decoded the token, so the token is decoded once per request; a request without a valid token is
    answered 401 there and counts against no one.
    """
    limits = state_of(request).resources.limits
    if not limits.enabled or limits.per_user is None:
        return
    if claims.jti in limits.refused:
        await _count_refused(limits, limits.per_user, claims)
        raise InvalidAccessToken
    wait = await limits.hit("user", limits.per_user, str(claims.user_id), moving=False)
    if wait is not None:
        raise _refuse("user", wait, "requests for this user")
    request.state.counted_claims = claims


async def _count_refused(limits: Limits, item: RateLimitItem, claims: AccessClaims) -> None:
    wait = await limits.hit("refused-token", item, claims.jti, moving=False)
    if wait is not None:
        raise _refuse("refused_token", wait, "requests with this refused access token")


async def refused_token_handler(request: Request, exc: Exception) -> Response:
    """`InvalidAccessToken`'s handler. A token the database refused after it was counted against
    its user (`limit_user`) gives that back, is remembered, and is counted under its own key; then
    the usual 401 (or 429, when the refused token itself is over the limit)."""
    claims: AccessClaims | None = getattr(request.state, "counted_claims", None)
    limits = state_of(request).resources.limits
    if claims is not None and limits.per_user is not None:
        await limits.give_back("user", limits.per_user, str(claims.user_id))
        limits.remember_refused(claims)
        try:
            await _count_refused(limits, limits.per_user, claims)
        except TooManyRequests as refused:
            exc = refused
    return await app_error_handler(request, exc)
