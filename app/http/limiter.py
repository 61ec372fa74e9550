"""The rate limiter's storage (the `limits` library): shared through Redis when REDIS_URL is set,
in-process otherwise, with this process's counters standing in while Redis is unreachable. What
is limited, and how a refusal is answered, is app.http.ratelimit's."""

from __future__ import annotations

import math
import time
from typing import Any

import structlog
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, RateLimiter

from app.core.config import Settings
from app.core.security import AccessClaims, KeyClaims
from app.observability.metrics import RATE_LIMIT_STORAGE_ERRORS

log = structlog.get_logger("app.ratelimit")

KEY_PREFIX = "fastapi-ml-service:limits"
# Access tokens (and API keys) the database refused, remembered by their `jti` until they expire
# (about 50 bytes each); past this many the oldest is forgotten, and costs one query again if it
# comes back.
REFUSED_TOKENS_KEPT = 4096


class Limits:
    """The process's limiter: Redis-backed when configured, with per-process counters as the
    fallback while Redis is unreachable. Made by the lifespan (`Resources.limits`)."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limit_enabled
        self.auth_per_address = _item(settings.rate_limit_auth_per_address)
        self.auth_per_account = _item(settings.rate_limit_auth_per_account)
        self.per_user = _item(settings.rate_limit_per_user)
        self.per_api_key = _item(settings.rate_limit_per_api_key)
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

    def remember_refused(self, claims: AccessClaims | KeyClaims, until: float) -> None:
        if len(self.refused) >= REFUSED_TOKENS_KEPT:
            now = time.time()
            self.refused = {jti: exp for jti, exp in self.refused.items() if exp > now}
            if len(self.refused) >= REFUSED_TOKENS_KEPT:
                del self.refused[next(iter(self.refused))]  # the oldest entry
        self.refused[claims.jti] = int(until)

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
