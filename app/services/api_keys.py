"""API keys: making, listing and revoking them (`ApiKeyService`), and recognising one on a request
(`KeyRing`, one per process)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from app.core.errors import Conflict, Forbidden, NotFound
from app.core.security import (
    API_KEY_SHOWN_CHARS,
    ApiKeyCodec,
    InvalidApiKey,
    KeyClaims,
    RefusedApiKey,
    Scope,
)
from app.db.database import Database
from app.models import ApiKey
from app.models.base import utcnow
from app.repositories.api_keys import ApiKeyRepository, by_hash
from app.repositories.users import UserRepository
from app.services.users import UserNotFound

log = structlog.get_logger(__name__)

# Keys whose claims a process keeps (about 300 bytes each), and keys the database refused (about 150
# bytes each); past this many the oldest is forgotten and costs one query again when it comes back.
KEYS_KEPT = 4096


class MissingScope(Forbidden):
    """An API key without a scope the route needs: named in the detail and, as RFC 6750 says, in
    `WWW-Authenticate`."""

    code = "insufficient-scope"

    def __init__(self, scope: str) -> None:
        super().__init__(
            f"This API key lacks the `{scope}` scope.",
            headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
        )


class ApiKeyNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("No such API key.")


class TooManyApiKeys(Conflict):
    code = "too-many-api-keys"

    def __init__(self, most: int) -> None:
        super().__init__(f"You already hold {most} live API keys, the most allowed: revoke one first.")


class KeyRing:
    """Recognises API keys: a key's id, owner, scopes and stored hash are read once per process (they
    never change) and kept, keyed by the key itself as the token codec keeps verified tokens (a key
    seen before costs a dictionary lookup, not two HMACs); whether the key is still good (not
    revoked, not expired, its owner active) is checked by the request's own statement, at every
    request, by the key's stored hash, so a revocation on one replica refuses the next request on
    every replica.

    A key the database refused (unknown, revoked, its owner deactivated or deleted) is remembered
    by its stored hash and refused from then on without a query (`RefusedApiKey`). Every one of
    those refusals is for good: a revoked key is never un-revoked, a deleted row never comes back,
    and deactivating a user revokes their keys (app.services.users), so no process can hold a
    refusal that another process has since seen lifted.

    Also keeps `last_used_at` without a write per request: uses are noted in memory and written
    by one background task every `flush_interval_s` (and at shutdown), one statement per flush.
    """

    def __init__(self, db: Database, codec: ApiKeyCodec, *, flush_interval_s: float) -> None:
        self._db = db
        self.codec = codec
        self._known: dict[str, KeyClaims] = {}  # by the key itself
        self._refused: dict[str, None] = {}  # stored hashes of keys the database refused, oldest first
        self._used: dict[int, float] = {}  # key id -> epoch seconds
        self._flush_interval_s = flush_interval_s
        self._task: asyncio.Task[None] | None = None

    async def identify(self, key: str) -> KeyClaims:
        """The claims of a key whose stored hash exists and that has not expired; `InvalidApiKey`
        otherwise (`RefusedApiKey` when the database refused it). A malformed or forged key, and a
        key refused before, cost no query."""
        claims = self._known.get(key)
        if claims is None:
            digest = self.codec.digest(key)
            if digest in self._refused:
                raise RefusedApiKey(digest)
            async with self._db.statements() as statements:
                row = await by_hash(statements, digest)
            if row is None or row["revoked_at"] is not None:
                self._remember_refused(digest)
                raise RefusedApiKey(digest)
            expires = row["expires_at"]
            claims = KeyClaims(
                row["user_id"],
                row["id"],
                frozenset(row["scopes"].split()),
                None if expires is None else expires.timestamp(),
                digest,
            )
            if len(self._known) >= KEYS_KEPT:
                del self._known[next(iter(self._known))]  # the oldest entry
            self._known[key] = claims
        if claims.expires_at is not None and claims.expires_at <= time.time():
            raise InvalidApiKey
        return claims

    def refused(self, claims: KeyClaims) -> None:
        """The request's statement refused a key this process knew (revoked elsewhere since, or its
        owner deactivated or deleted): forget it, and refuse it from now on without a query."""
        self._known = {key: known for key, known in self._known.items() if known.digest != claims.digest}
        self._remember_refused(claims.digest)

    def _remember_refused(self, digest: str) -> None:
        if len(self._refused) >= KEYS_KEPT:
            del self._refused[next(iter(self._refused))]  # the oldest entry
        self._refused[digest] = None

    def used(self, claims: KeyClaims) -> None:
        """Note a request the key was accepted for (written by the next flush)."""
        self._used[claims.key_id] = time.time()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="api-key-usage")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            await self.flush()

    async def flush(self) -> None:
        if not self._used:
            return
        used, self._used = self._used, {}
        try:
            async with self._db.session() as session:
                await ApiKeyRepository(session).touch(
                    {key_id: datetime.fromtimestamp(when, UTC) for key_id, when in used.items()}
                )
                await session.commit()
        except Exception as exc:  # noqa: BLE001 - kept for the next flush; never stops the task
            for key_id, when in used.items():
                self._used.setdefault(key_id, when)
            log.warning("api_key_usage_write_failed", keys=len(used), error=type(exc).__name__)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        await self.flush()


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just made: the row and the secret, which is shown this once and never again."""

    key: ApiKey
    secret: str


class ApiKeyService:
    def __init__(self, db: Database, codec: ApiKeyCodec, *, most_per_user: int) -> None:
        self.db = db
        self.codec = codec
        self.most_per_user = most_per_user

    async def create(
        self, user_id: int, is_admin: bool, name: str, scopes: Sequence[Scope], expires_in_days: int | None
    ) -> NewKey:
        """A key for the user. It may do no more than its owner: the admin scope only for admins; and
        the user may hold at most `most_per_user` live keys (each key has its own rate limit, so the
        cap also bounds what one user's programs may send)."""
        if Scope.ADMIN in scopes and not is_admin:
            raise Forbidden("Only an admin may make a key with the `admin` scope.")
        secret, digest = self.codec.new()
        now = utcnow()
        key = ApiKey(
            user_id=user_id,
            name=name,
            prefix=secret[:API_KEY_SHOWN_CHARS],
            key_hash=digest,
            scopes=" ".join(sorted(set(scopes))),
            created_at=now,
            expires_at=None if expires_in_days is None else now + timedelta(days=expires_in_days),
        )
        async with self.db.session() as session:
            keys = ApiKeyRepository(session)
            # The owner's row locked first, so two concurrent requests cannot both see room for one
            # more key.
            await UserRepository(session).lock(user_id)
            if await keys.live_count(user_id, now) >= self.most_per_user:
                raise TooManyApiKeys(self.most_per_user)
            await keys.add(key)
            await session.commit()
        return NewKey(key, secret)

    async def of_user(self, user_id: int, *, must_exist: bool = False) -> Sequence[ApiKey]:
        """The user's keys; with `must_exist`, a user who does not exist is a 404 (for admins)."""
        async with self.db.session(read_only=True) as session:
            if must_exist and await UserRepository(session).get(user_id) is None:
                raise UserNotFound
            return await ApiKeyRepository(session).of_user(user_id)

    async def revoke(self, user_id: int, key_id: int) -> None:
        """Revoke one of the user's keys (again: nothing changes); 404 for anyone else's."""
        async with self.db.session() as session:
            keys = ApiKeyRepository(session)
            key = await keys.get(user_id, key_id)
            if key is None:
                raise ApiKeyNotFound
            await keys.revoke(key)
            await session.commit()
