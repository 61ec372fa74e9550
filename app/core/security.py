"""Passwords (Argon2id, off the event loop, bounded), tokens (JWT access, opaque refresh) and API
keys (opaque, stored as a keyed hash)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from app.core.config import Settings
from app.core.errors import Unauthorized

REFRESH_TOKEN_BYTES = 32
# Clock skew allowed on exp and nbf.
TOKEN_LEEWAY_S = 5
# Verified access tokens whose claims are kept (about 600 bytes each).
VERIFIED_TOKENS_KEPT = 2048


class PasswordHasher:
    """Argon2id hashing in a dedicated, bounded thread pool.

    Argon2 releases the GIL, so threads run hashes in parallel without stalling the event loop.
    The pool size bounds how many hashes hold their memory cost at once (19 MiB each by default);
    a burst of logins waits in the pool's queue instead of allocating memory for all of them.
    """

    def __init__(self, settings: Settings) -> None:
        self._hash = PasswordHash(
            (
                Argon2Hasher(
                    memory_cost=settings.password_hash_memory_kib,
                    time_cost=settings.password_hash_time_cost,
                    parallelism=settings.password_hash_parallelism,
                ),
            )
        )
        self._pool = ThreadPoolExecutor(
            max_workers=settings.password_hash_concurrency, thread_name_prefix="argon2"
        )
        # Verified when an email is unknown, so a login takes as long whether or not it exists.
        self._dummy_hash = self._hash.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._hash.hash, password)

    async def verify(self, password: str, hashed: str | None) -> bool:
        """True when `password` matches `hashed`; with `hashed=None` it burns the same time, then fails."""
        target = hashed if hashed is not None else self._dummy_hash
        ok = await asyncio.get_running_loop().run_in_executor(self._pool, self._hash.verify, password, target)
        return ok and hashed is not None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: int
    session_id: str
    jti: str
    expires_at: int


class Scope(StrEnum):
    """What an API key may do (docs/api.md). An access token (a person logged in) may do everything
    its user may; a key only what its scopes name, and never more than its owner may."""

    PREDICT = "predict"
    MODELS_READ = "models:read"
    ITEMS_READ = "items:read"
    ITEMS_WRITE = "items:write"
    PREDICTIONS_READ = "predictions:read"
    FEEDBACK_WRITE = "feedback:write"
    JOBS_READ = "jobs:read"
    JOBS_WRITE = "jobs:write"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class KeyClaims:
    """An API key whose secret is right (its keyed hash is a stored key's), not yet checked against
    the database at this request: it may have been revoked since, or its owner deactivated or
    deleted. Its id, owner, scopes and hash never change, so they are kept by the process. The
    check at every request matches the key by `digest` (its stored hash), never by the two ids
    alone: it stands for this very key, whatever ids the database issues later."""

    user_id: int
    key_id: int
    scopes: frozenset[str]
    expires_at: float | None  # epoch seconds; None: never
    digest: str  # the stored hash (HMAC-SHA256 of the key): not the key, useless without SECRET_KEY

    @property
    def jti(self) -> str:
        """The name the rate limiter counts a refused key under (an access token's is its `jti`)."""
        return refused_key_name(self.digest)


def refused_key_name(digest: str) -> str:
    return f"api-key:{digest[:32]}"


# What a request's credentials say: an access token's claims or an API key's.
Credentials = AccessClaims | KeyClaims


class Unchecked(RuntimeError):
    """Who a principal is was read before the database checked it: a bug (a 500), never an answer."""


class Principal:
    """Who is calling: a user, through a login session (an access token) or one of their API keys
    (`key_id`, limited to its `scopes`). The one type a route receives (app.api.deps: `CurrentUser`,
    `ItemReader`, `Predictor`, ... each names the scope it needs).

    Made from credentials that are well-formed, correctly signed (or a key this service made and
    stored), unexpired and within the route's scopes, then checked against the database at every
    request (the user active, the login session or the key live): by the dependency before the route
    runs, or, on the item routes, by the item service, whose hottest statements check it in the same
    round trip as their work (app.repositories.items). Until it has been checked, who it is cannot
    be read: `id`, `email`, `is_active`, `is_admin` and `created_at` raise `Unchecked`, so nothing
    can take the user of an unchecked principal on trust. Its credentials are private: only the
    checking statements read them (`app.repositories.users.Access`; tests/unit/
    test_unchecked_principal.py), and every route is called with an ended login's token by tests/
    security/test_api2_authentication.py, which fails unless the answer is 401.
    """

    __slots__ = ("_credentials", "_user")

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials
        self._user: tuple[int, str, bool, bool, datetime] | None = None

    def _confirm(self, user: tuple[int, str, bool, bool, datetime]) -> None:
        """Called by the checking statement (app.repositories.users) with the user it found."""
        self._user = user

    def _checked(self) -> tuple[int, str, bool, bool, datetime]:
        if self._user is None:
            raise Unchecked("the caller was read before the database checked their credentials")
        return self._user

    @property
    def id(self) -> int:
        return self._checked()[0]

    @property
    def email(self) -> str:
        return self._checked()[1]

    @property
    def is_active(self) -> bool:
        return self._checked()[2]

    @property
    def is_admin(self) -> bool:
        return self._checked()[3]

    @property
    def created_at(self) -> datetime:
        return self._checked()[4]

    @property
    def session_id(self) -> str | None:
        """The login session of a person logged in; None for an API key."""
        credentials = self._credentials
        return credentials.session_id if isinstance(credentials, AccessClaims) else None

    @property
    def key_id(self) -> int | None:
        """The API key a program called with; None for a person logged in."""
        credentials = self._credentials
        return credentials.key_id if isinstance(credentials, KeyClaims) else None

    @property
    def scopes(self) -> frozenset[str] | None:
        """An API key's scopes; None for a person logged in, who may do whatever their user may."""
        credentials = self._credentials
        return credentials.scopes if isinstance(credentials, KeyClaims) else None

    def refusal(self) -> InvalidAccessToken | InvalidApiKey:
        """The 401 for credentials the database refused, carrying them for the rate limiter."""
        return refusal(self._credentials)


class InvalidToken(Exception):
    """The token is malformed, forged, expired or otherwise unusable."""


class InvalidAccessToken(Unauthorized):
    """The 401 for an access token that is not good: unusable (`InvalidToken`), or refused by the
    database (its login session ended, its user deactivated or deleted): then it carries the
    token's claims (`refused`), which the rate limiter gives back and remembers
    (app.http.ratelimit)."""

    def __init__(self, refused: AccessClaims | None = None) -> None:
        super().__init__("The access token is invalid, expired or revoked.")
        self.refused = refused


class TokenCodec:
    """Short-lived HS256 access tokens. The algorithm, issuer and audience are pinned on decode."""

    def __init__(self, settings: Settings, key: str) -> None:
        self._key = key
        self._algorithm = settings.jwt_algorithm
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self.lifetime = settings.access_token_expire_seconds
        self._verified: dict[str, AccessClaims] = {}

    def issue(self, user_id: int, session_id: str) -> tuple[str, AccessClaims]:
        now = int(time.time())
        claims = AccessClaims(user_id, session_id, uuid.uuid4().hex, now + self.lifetime)
        payload: dict[str, Any] = {
            "sub": str(user_id),
            "sid": session_id,
            "jti": claims.jti,
            "iat": now,
            "nbf": now,
            "exp": claims.expires_at,
            "iss": self._issuer,
            "aud": self._audience,
        }
        return jwt.encode(payload, self._key, algorithm=self._algorithm), claims

    def decode(self, token: str) -> AccessClaims:
        """The claims of a valid token. A token verified before is not verified again (PyJWT costs
        about 40 us a token here, a third of a cached read): its claims are kept, keyed by the
        token's exact text, in a bounded memo, and only the expiry is checked again, as PyJWT checks
        it. A token is never refused or accepted differently from a fresh decode; revocation is
        not decided here (it is checked against the database at every request)."""
        claims = self._verified.get(token)
        if claims is not None:
            if time.time() - TOKEN_LEEWAY_S < claims.expires_at:
                return claims
            del self._verified[token]
            raise InvalidToken("Signature has expired")
        claims = self._decode(token)
        if len(self._verified) >= VERIFIED_TOKENS_KEPT:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        self._verified[token] = claims
        return claims

    def _decode(self, token: str) -> AccessClaims:
        try:
            payload = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "sub", "jti", "sid", "iss", "aud"]},
                leeway=TOKEN_LEEWAY_S,
            )
            return AccessClaims(
                int(payload["sub"]), str(payload["sid"]), str(payload["jti"]), int(payload["exp"])
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidToken(str(exc)) from exc


def new_refresh_token() -> str:
    """An opaque, unguessable refresh token; only its hash is stored."""
    return secrets.token_urlsafe(REFRESH_TOKEN_BYTES)


def hash_refresh_token(token: str) -> str:
    # A fast hash is right here: the token has 256 bits of entropy, so it cannot be brute-forced.
    return hashlib.sha256(token.encode()).hexdigest()


# --- API keys ---------------------------------------------------------------------------------
# A key: the recognisable prefix (secret scanners and people can tell what leaked), 24 random bytes
# (192 bits) and a 6-byte tag, all URL-safe base64: `mlk_` + 32 + 8 characters.
API_KEY_PREFIX = "mlk_"
_KEY_RANDOM_BYTES = 24
_KEY_TAG_BYTES = 6
_KEY_BODY_CHARS = 32 + 8
# The part of a key shown in lists (never enough to use it): the prefix and 8 random characters.
API_KEY_SHOWN_CHARS = len(API_KEY_PREFIX) + 8


class InvalidApiKey(Unauthorized):
    """The 401 for an API key that is not good: malformed, forged, unknown, revoked, expired, or its
    owner deactivated or deleted. One answer for all, so a caller learns nothing about which. Refused
    by the request's checking statement, it carries the key's claims (`refused`), as
    `InvalidAccessToken` does."""

    def __init__(self, refused: KeyClaims | None = None) -> None:
        super().__init__("The API key is invalid, expired or revoked.")
        self.refused = refused


class RefusedApiKey(InvalidApiKey):
    """A key this service made (its tag is right) that the database refused: unknown, revoked, or
    its owner deactivated or deleted. The same 401 as `InvalidApiKey`; it carries the stored hash so
    the refusal is counted under the key (app.http.ratelimit) and remembered by the process."""

    def __init__(self, digest: str) -> None:
        super().__init__()
        self.digest = digest


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class ApiKeyCodec:
    """Makes API keys and the keyed hash they are stored and looked up by.

    Two keys derived from SECRET_KEY: one for the tag (a key that is not one this service made is
    refused without a query, as a forged access token is), one for the stored hash (HMAC-SHA256: a
    database dump alone does not let anyone test a guessed key). A fast keyed hash, not Argon2: a
    key carries 192 random bits, so a slow hash adds nothing against guessing and would cost
    milliseconds on every request (docs/security.md). Rotating SECRET_KEY ends every key, as it
    ends every access token.
    """

    def __init__(self, key: str) -> None:
        secret = key.encode()
        self._tag_key = hmac.new(secret, b"api-key tag", hashlib.sha256).digest()
        self._hash_key = hmac.new(secret, b"api-key hash", hashlib.sha256).digest()

    def new(self) -> tuple[str, str]:
        """A new key and its stored hash. The key is shown once; only the hash is kept."""
        body = _b64(secrets.token_bytes(_KEY_RANDOM_BYTES))
        key = API_KEY_PREFIX + body + self._tag(body)
        return key, self.digest(key)

    def digest(self, key: str) -> str:
        """The stored hash of a key this service made; `InvalidApiKey` for anything else (checked in
        constant time, before any query)."""
        body = key[len(API_KEY_PREFIX) :]
        if not key.startswith(API_KEY_PREFIX) or len(body) != _KEY_BODY_CHARS:
            raise InvalidApiKey
        random_part, tag = body[:32], body[32:]
        if not hmac.compare_digest(tag.encode(), self._tag(random_part).encode()):
            raise InvalidApiKey
        return hmac.new(self._hash_key, key.encode(), hashlib.sha256).hexdigest()

    def _tag(self, random_part: str) -> str:
        mac = hmac.new(self._tag_key, random_part.encode(), hashlib.sha256).digest()
        return _b64(mac[:_KEY_TAG_BYTES])


def is_api_key(credential: str) -> bool:
    """True when a bearer credential is an API key rather than an access token (a JWT never starts
    with the prefix: its first segment is base64 of `{"`)."""
    return credential.startswith(API_KEY_PREFIX)


def refusal(claims: Credentials) -> InvalidAccessToken | InvalidApiKey:
    """The 401 for credentials the database refused (their login ended, their key was revoked,
    their user deactivated or deleted), carrying them."""
    return InvalidAccessToken(claims) if isinstance(claims, AccessClaims) else InvalidApiKey(claims)
