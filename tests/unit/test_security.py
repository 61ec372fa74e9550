"""Password hashing (Argon2id, bounded, off the loop) and tokens (pinned JWTs, opaque refresh tokens)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import jwt
import pytest

from app.core.config import Settings
from app.core.security import (
    TOKEN_LEEWAY_S,
    VERIFIED_TOKENS_KEPT,
    InvalidToken,
    PasswordHasher,
    TokenCodec,
    hash_refresh_token,
    new_refresh_token,
)
from tests.conftest import TEST_SECRET_KEY, make_settings


@pytest.fixture
def settings() -> Settings:
    return make_settings("sqlite+aiosqlite:///unused.db")


@pytest.fixture
def hasher(settings: Settings) -> Any:
    hasher = PasswordHasher(settings)
    yield hasher
    hasher.close()


@pytest.fixture
def codec(settings: Settings) -> TokenCodec:
    return TokenCodec(settings, TEST_SECRET_KEY)


# --- passwords ---


async def test_hash_and_verify(hasher: PasswordHasher) -> None:
    hashed = await hasher.hash("correct horse")
    assert hashed.startswith("$argon2id$")
    assert "correct horse" not in hashed
    assert await hasher.verify("correct horse", hashed)
    assert not await hasher.verify("wrong horse", hashed)
    assert await hasher.hash("correct horse") != hashed, "no salt"


async def test_hash_uses_the_configured_parameters() -> None:
    hasher = PasswordHasher(
        make_settings(
            "sqlite+aiosqlite:///unused.db",
            password_hash_memory_kib=2048,
            password_hash_time_cost=2,
            password_hash_parallelism=1,
        )
    )
    try:
        assert "$m=2048,t=2,p=1$" in await hasher.hash("pw")
    finally:
        hasher.close()


async def test_verify_against_no_hash_fails_after_doing_the_work(hasher: PasswordHasher) -> None:
    """An unknown email still costs one verification, so timing does not reveal it."""
    calls: list[str] = []
    real = hasher._hash.verify

    def counting(password: str, hashed: str) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    hasher._hash.verify = counting  # type: ignore[method-assign]
    assert not await hasher.verify("anything", None)
    assert len(calls) == 1
    assert calls[0].startswith("$argon2id$")


async def test_concurrent_hashes_are_bounded_and_keep_the_loop_free() -> None:
    hasher = PasswordHasher(make_settings("sqlite+aiosqlite:///unused.db", password_hash_concurrency=2))
    running = 0
    peak = 0
    lock = threading.Lock()
    loop_thread = threading.get_ident()
    threads: set[int] = set()
    real = hasher._hash.hash

    def slow_hash(password: str) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            threads.add(threading.get_ident())
        time.sleep(0.02)
        with lock:
            running -= 1
        return real(password)

    hasher._hash.hash = slow_hash  # type: ignore[method-assign]
    try:
        hashes = await asyncio.gather(*(hasher.hash(f"pw{n}") for n in range(8)))
    finally:
        hasher.close()
    assert len(set(hashes)) == 8
    assert peak == 2
    assert loop_thread not in threads


# --- access tokens ---


def test_issue_and_decode(codec: TokenCodec) -> None:
    token, claims = codec.issue(42, "s" * 32)
    decoded = codec.decode(token)
    assert decoded == claims
    assert decoded.user_id == 42
    assert decoded.session_id == "s" * 32
    payload = jwt.decode(token, options={"verify_signature": False})
    assert {"exp", "iat", "sub", "jti", "iss", "aud"} <= payload.keys()
    assert payload["exp"] - payload["iat"] == codec.lifetime
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_every_token_has_its_own_jti(codec: TokenCodec) -> None:
    assert codec.issue(1, "s")[1].jti != codec.issue(1, "s")[1].jti


def _payload(settings: Settings, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": "1",
        "sid": "s",
        "jti": "j",
        "iat": now,
        "exp": now + 60,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not None}


def test_a_valid_forged_payload_decodes(codec: TokenCodec, settings: Settings) -> None:
    """Control for the refusals below."""
    assert codec.decode(jwt.encode(_payload(settings), TEST_SECRET_KEY, algorithm="HS256")).user_id == 1


@pytest.mark.parametrize(
    ("changes", "key", "algorithm"),
    [
        ({"exp": int(time.time()) - 30}, TEST_SECRET_KEY, "HS256"),
        ({"iss": "other"}, TEST_SECRET_KEY, "HS256"),
        ({"aud": "other"}, TEST_SECRET_KEY, "HS256"),
        ({"sid": None}, TEST_SECRET_KEY, "HS256"),
        ({"sub": None}, TEST_SECRET_KEY, "HS256"),
        ({"sub": "abc"}, TEST_SECRET_KEY, "HS256"),
        ({}, "another-key-of-enough-length-1234567", "HS256"),
        ({}, TEST_SECRET_KEY, "HS512"),
        ({}, None, "none"),
    ],
    ids=["expired", "issuer", "audience", "no-sid", "no-sub", "bad-sub", "key", "alg-hs512", "alg-none"],
)
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the HS512 case, on purpose
def test_refused_tokens(
    codec: TokenCodec, settings: Settings, changes: dict[str, Any], key: str | None, algorithm: str
) -> None:
    token = jwt.encode(_payload(settings, **changes), key, algorithm=algorithm)
    with pytest.raises(InvalidToken):
        codec.decode(token)


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "e30.e30.", "x" * 5000])
def test_garbage_is_refused(codec: TokenCodec, token: str) -> None:
    with pytest.raises(InvalidToken):
        codec.decode(token)


def test_a_remembered_token_still_expires(codec: TokenCodec, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoded once, a token's claims are remembered; its expiry is still checked at each use,
    with the same leeway as a fresh decode."""
    token, claims = codec.issue(7, "s")
    assert codec.decode(token) == claims
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: claims.expires_at + TOKEN_LEEWAY_S - 1)
    assert codec.decode(token) == claims  # within the leeway: still accepted, as PyJWT would
    monkeypatch.setattr(time, "time", lambda: claims.expires_at + TOKEN_LEEWAY_S)
    with pytest.raises(InvalidToken):
        codec.decode(token)
    assert token not in codec._verified  # forgotten: PyJWT decides from now on
    assert now < claims.expires_at


def test_a_tampered_copy_of_a_remembered_token_is_refused(codec: TokenCodec) -> None:
    token, _ = codec.issue(7, "s")
    codec.decode(token)
    header, payload, signature = token.split(".")
    forged_payload = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(payload).replace(b'"7"', b'"8"')
    ).decode()
    with pytest.raises(InvalidToken):
        codec.decode(f"{header}.{forged_payload}.{signature}")


def test_the_memo_of_verified_tokens_is_bounded(codec: TokenCodec) -> None:
    tokens = [codec.issue(n, "s")[0] for n in range(VERIFIED_TOKENS_KEPT + 10)]
    for token in tokens:
        codec.decode(token)
    assert len(codec._verified) == VERIFIED_TOKENS_KEPT
    assert tokens[0] not in codec._verified  # the oldest went first
    assert codec.decode(tokens[0]).user_id == 0  # and is verified again when it comes back


# --- refresh tokens ---


def test_refresh_tokens_are_unguessable_and_stored_hashed() -> None:
    tokens = {new_refresh_token() for _ in range(100)}
    assert len(tokens) == 100
    token = next(iter(tokens))
    assert len(token) >= 43  # 32 random bytes
    digest = hash_refresh_token(token)
    assert digest == hash_refresh_token(token)
    assert len(digest) == 64
    assert token not in digest
    assert hash_refresh_token(token + "x") != digest
