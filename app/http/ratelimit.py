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
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from fastapi import Request
from fastapi.responses import Response
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, RateLimiter

from app.core.config import Settings
from app.core.emails import canonical_email
from app.core.errors import TooManyRequests
from app.core.security import AccessClaims, InvalidAccessToken
from app.http.problems import app_error_handler, media_type
from app.observability.metrics import RATE_LIMIT_STORAGE_ERRORS, RATE_LIMITED

log = structlog.get_logger("app.ratelimit")

KEY_PREFIX = "fastapi-ml-service:limits"
# Access tokens the database refused, remembered by their `jti` until they expire (about 50 bytes
# each); past this many the oldest is forgotten, and costs one query again if it comes back.
REFUSED_TOKENS_KEPT = 4096


class Limits:
    """The process's limiter: Redis-backed when configured, with per-process counters as the
    fallback while Redis is unreachable. Made in the lifespan, on `app.state.rate_limits`."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limit_enabled
        self.auth_per_address = _item(settings.rate_limit_auth_per_address)
        self.auth_per_account = _item(settings.rate_limit_auth_per_account)
        self.per_user = _item(settings.rate_limit_per_user)
        self.retry_interval = settings.redis_retry_interval
        memory = MemoryStorage()
        # Moving window for the auth limits (no burst of 2N across a window edge); the cheaper fixed
        # window, one INCR, for the per-user limit every authenticated request pays for.
        self._local = (MovingWindowRateLimiter(memory), FixedWindowRateLimiter(memory))
        self._shared: tuple[RateLimiter, RateLimiter] | None = None
        self._redis: RedisStorage | None = None
        self._errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
        if settings.redis_url:
            # Imported only with Redis configured: redis-py adds a third of a second to start-up.
            from redis.asyncio.retry import Retry  # noqa: PLC0415
            from redis.backoff import NoBackoff  # noqa: PLC0415
            from redis.exceptions import RedisError  # noqa: PLC0415

            self._errors = (RedisError, OSError, TimeoutError)
            client_options: dict[str, Any] = {
                "socket_connect_timeout": settings.redis_timeout,
                "socket_timeout": settings.redis_timeout,
                # One immediate retry: enough for a connection Redis closed while idle; more (or a
                # backoff, redis-py's default) would make every request wait while Redis is down.
                "retry": Retry(NoBackoff(), 1),
            }
            self._redis = RedisStorage(
                "async+" + settings.redis_url,
                implementation="redispy",
                key_prefix=KEY_PREFIX,
                **client_options,
            )
            self._shared = (MovingWindowRateLimiter(self._redis), FixedWindowRateLimiter(self._redis))
        self._redis_down_until = 0.0
        self.redis_healthy = True
        self.refused: dict[str, int] = {}  # jti -> expiry (epoch seconds)

    @property
    def shared(self) -> bool:
        return self._redis is not None

    async def hit(self, name: str, item: RateLimitItem, *identifiers: str, moving: bool = True) -> int | None:
        """Count one request against `item` for `identifiers`; the seconds to wait when over it."""
        index = 0 if moving else 1
        if self._shared is not None and time.monotonic() >= self._redis_down_until:
            try:
                wait = await _hit(self._shared[index], name, item, identifiers)
            except self._errors as exc:
                self._redis_failed(exc)
            else:
                if not self.redis_healthy:
                    self.redis_healthy = True
                    log.warning("rate_limit_redis_recovered")
                return wait
        return await _hit(self._local[index], name, item, identifiers)

    async def give_back(self, name: str, item: RateLimitItem, *identifiers: str) -> None:
        """Undo one fixed-window `hit` (where Redis is down, on this process's counters, as the hit
        was). A window that ended in between starts one lower: one request of grace, no more."""
        limiter: RateLimiter = self._local[1]
        if self._shared is not None and time.monotonic() >= self._redis_down_until:
            limiter = self._shared[1]
        try:
            await limiter.storage.incr(item.key_for(name, *identifiers), item.get_expiry(), amount=-1)
        except self._errors as exc:
            self._redis_failed(exc)

    def remember_refused(self, claims: AccessClaims) -> None:
        if len(self.refused) >= REFUSED_TOKENS_KEPT:
            now = time.time()
            self.refused = {jti: exp for jti, exp in self.refused.items() if exp > now}
            if len(self.refused) >= REFUSED_TOKENS_KEPT:
                del self.refused[next(iter(self.refused))]  # the oldest entry
        self.refused[claims.jti] = claims.expires_at

    def _redis_failed(self, exc: BaseException) -> None:
        RATE_LIMIT_STORAGE_ERRORS.inc()
        self._redis_down_until = time.monotonic() + self.retry_interval
        if self.redis_healthy:
            self.redis_healthy = False
            log.warning(
                "rate_limit_redis_unavailable",
                error=type(exc).__name__,
                fallback="per-process limits",
                retry_in_s=self.retry_interval,
            )

    async def close(self) -> None:
        if self._redis is not None:
            client: Any = getattr(self._redis.bridge, "storage", None)
            if client is not None:
                await client.aclose()


async def _hit(
    limiter: RateLimiter, name: str, item: RateLimitItem, identifiers: tuple[str, ...]
) -> int | None:
    if await limiter.hit(item, name, *identifiers):
        return None
    stats = await limiter.get_window_stats(item, name, *identifiers)
    return max(1, math.ceil(stats.reset_time - time.time()))


def _item(value: str | None) -> RateLimitItem | None:
    return parse(value) if value else None


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
        limits: Limits | None = getattr(request.app.state, "rate_limits", None)
        if limits is None or not limits.enabled:
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

    Called by the authentication dependency (`app.api.deps.get_principal`) right after it has
    decoded the token, so the token is decoded once per request; a request without a valid token is
    answered 401 there and counts against no one.
    """
    limits: Limits | None = getattr(request.app.state, "rate_limits", None)
    if limits is None or not limits.enabled or limits.per_user is None:
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
    limits: Limits | None = getattr(request.app.state, "rate_limits", None)
    if claims is not None and limits is not None and limits.per_user is not None:
        await limits.give_back("user", limits.per_user, str(claims.user_id))
        limits.remember_refused(claims)
        try:
            await _count_refused(limits, limits.per_user, claims)
        except TooManyRequests as refused:
            exc = refused
    return await app_error_handler(request, exc)
