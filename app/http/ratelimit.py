"""Rate limits (the `limits` library): shared through Redis when REDIS_URL is set, in-process otherwise.

- Log-in and registration: per client address and per account email, each endpoint counted
  on its own (`rate_limit_auth_per_address`, `rate_limit_auth_per_account`).
- Every authenticated request: per user (`rate_limit_per_user`), counted once its access token is
  correctly signed and unexpired; with an API key, per key instead (`rate_limit_per_api_key`), so
  a user's programs and the user's own sessions do not starve one another. A token the database
  then refuses (its login ended, its user was deactivated or deleted) gives that request back to
  its user and is remembered by this process: from then on it is counted under a key of its own
  (the token's), never its user's, and answered 401 without a query (429 once it is over the same
  number). Whoever holds a logged-out token cannot spend its owner's allowance. An API key the
  database refused (revoked, unknown, its owner deactivated or deleted) is remembered by the
  process's key ring (app.services.api_keys.KeyRing) for good, answered 401 without a query, and
  counted under a key of its own from its first refusal, whether or not this process knew it.

A refused request gets 429 problem details with `Retry-After`. If Redis cannot be reached the
request is still served: the check falls back to this process's own counters (limits hold per
process instead of per fleet), a warning is logged once per outage and
`rate_limit_storage_errors_total` counts every failed check. Redis is tried again after
`redis_retry_interval` seconds, so the service recovers by itself when Redis returns.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response
from limits import RateLimitItem

from app.core.emails import canonical_email
from app.core.errors import TooManyRequests
from app.core.security import (
    AccessClaims,
    Credentials,
    InvalidAccessToken,
    InvalidApiKey,
    KeyClaims,
    RefusedApiKey,
    refused_key_name,
)
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


# --- The per-caller limit: taken when the credentials are read, given back when the database refuses
# them. Both halves are here; they talk through the refusal itself, which carries the credentials.


def _bucket(limits: Limits, claims: Credentials) -> tuple[str, RateLimitItem | None, str]:
    """Where a request is counted: an access token under its user, an API key under itself."""
    if isinstance(claims, KeyClaims):
        return "api-key", limits.per_api_key, str(claims.key_id)
    return "user", limits.per_user, str(claims.user_id)


async def limit_caller(request: Request, claims: Credentials) -> None:
    """Take: the per-user limit (an access token) or the per-key limit (an API key), counted for
    every request whose token is well-formed, correctly signed and unexpired (or whose key is one
    this service made), so nobody can spend another user's allowance with a forged `sub`, before it
    is checked against the database: an over-limit caller costs no query. Should the database then
    refuse it, `refused_token_handler` gives the request back.

    A token (or key) this process has seen refused is counted under its own key instead and
    answered 401 here, before anything else is spent.

    Called by the authentication dependency (`app.api.deps.Bearer`) right after it has read the
    credentials, so they are read once per request; a request without valid ones is answered 401
    there and counts against no one.
    """
    limits = state_of(request).resources.limits
    if not limits.enabled:
        return
    name, item, identifier = _bucket(limits, claims)
    if item is None:
        return
    if limits.refused.get(claims.jti, 0) > time.time():
        await _count_refused(limits, item, claims.jti)
        # Carrying no credentials: nothing was taken from its user, so nothing is given back.
        raise InvalidAccessToken() if isinstance(claims, AccessClaims) else InvalidApiKey()
    wait = await limits.hit(name, item, identifier, moving=False)
    if wait is not None:
        what = "requests with this API key" if name == "api-key" else "requests for this user"
        raise _refuse(name.replace("-", "_"), wait, what)


async def limit_refused_key(request: Request, refused: RefusedApiKey) -> None:
    """Count a request whose API key the database refused (now, or before: `KeyRing` remembers)
    under the key's own name: 429 once it is over the per-key limit, so refused keys cost a bounded
    number of requests whether or not this process had seen them."""
    limits = state_of(request).resources.limits
    if limits.enabled and limits.per_api_key is not None:
        await _count_refused(limits, limits.per_api_key, refused_key_name(refused.digest))


async def _count_refused(limits: Limits, item: RateLimitItem, name: str) -> None:
    wait = await limits.hit("refused-token", item, name, moving=False)
    if wait is not None:
        raise _refuse("refused_token", wait, "requests with these refused credentials")


async def refused_token_handler(request: Request, exc: Exception) -> Response:
    """Give back: the handler of `InvalidAccessToken` and `InvalidApiKey`. Credentials the
    database refused (whichever statement refused them: the dependency's check or the item
    service's own) come with the refusal (`exc.refused`); the request they were counted for
    (`limit_caller`) is given back, they are remembered (an access token by this process's limiter
    until it expires, an API key by the key ring for good) and counted under their own key; then
    the usual 401 (or 429, when the refused credentials are over the limit). A token refused before
    any count (malformed, forged, expired) carries nothing and is answered as it is."""
    claims = exc.refused if isinstance(exc, InvalidAccessToken | InvalidApiKey) else None
    if claims is not None:
        resources = state_of(request).resources
        limits = resources.limits
        if isinstance(claims, KeyClaims):
            resources.keys.refused(claims)
        name, item, identifier = _bucket(limits, claims)
        if limits.enabled and item is not None:
            await limits.give_back(name, item, identifier)
            if isinstance(claims, AccessClaims):
                limits.remember_refused(claims, claims.expires_at)
            try:
                await _count_refused(limits, item, claims.jti)
            except TooManyRequests as refused:
                exc = refused
    return await app_error_handler(request, exc)
