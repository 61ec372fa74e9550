"""Registration, login, refresh-token rotation with reuse detection, logout, and token checks."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from app.core.errors import Conflict, Forbidden, Unauthorized
from app.core.security import (
    AccessClaims,
    InvalidAccessToken,
    InvalidToken,
    PasswordHasher,
    Principal,
    TokenCodec,
    hash_refresh_token,
    new_refresh_token,
)
from app.db.database import Database
from app.models import AuthSession, User
from app.models.base import utcnow
from app.repositories.users import (
    Access,
    DuplicateEmail,
    NoCaller,
    SessionRepository,
    UserRepository,
    check_principal,
)


class EmailTaken(Conflict):
    def __init__(self) -> None:
        super().__init__("A user with this email already exists.")


class BadCredentials(Unauthorized):
    def __init__(self) -> None:
        super().__init__("Incorrect email or password.")


class InvalidRefreshToken(Unauthorized):
    def __init__(self) -> None:
        super().__init__("The refresh token is invalid, expired or already used.")


def read_access_token(codec: TokenCodec, access_token: str) -> AccessClaims:
    """The claims of a well-formed, correctly signed, unexpired access token (not yet checked
    against the database: see `authenticate`)."""
    try:
        return codec.decode(access_token)
    except InvalidToken as exc:
        raise InvalidAccessToken from exc


async def authenticate(db: Database, principal: Principal) -> Principal:
    """`principal`, checked: its user active, its login session (or API key) neither revoked nor
    expired. One statement on a connection of its own, at every request (no cache), so a logout, a
    key's revocation, a deactivation or a deletion refuses the very next request on every
    replica."""
    access = Access(principal)
    try:
        async with db.statements() as statements:
            await check_principal(statements, access)
    except NoCaller:
        raise access.refusal() from None
    return principal


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    access_token: str
    expires_in: int
    refresh_token: str


class AuthService:
    """Each operation opens the ORM session its queries need and commits its changes; password
    hashing runs outside it, so no connection waits on Argon2."""

    def __init__(
        self,
        db: Database,
        hasher: PasswordHasher,
        codec: TokenCodec,
        refresh_lifetime: timedelta,
    ) -> None:
        self.db = db
        self.hasher = hasher
        self.codec = codec
        self.refresh_lifetime = refresh_lifetime

    async def register(self, email: str, password: str, *, is_admin: bool = False) -> User:
        hashed = await self.hasher.hash(password)
        async with self.db.session() as session:
            try:
                user = await UserRepository(session).add(
                    User(email=email, hashed_password=hashed, is_admin=is_admin)
                )
            except DuplicateEmail as exc:
                raise EmailTaken from exc
            await session.commit()
        return user

    async def login(self, email: str, password: str) -> IssuedTokens:
        # The repository looks the address up in its one normal form (app.core.emails), so either
        # form a user types (full-width, punycode or Unicode domain) finds the account.
        async with self.db.session(read_only=True) as session:
            user = await UserRepository(session).get_by_email(email)
        # Verify even when the email is unknown (against a dummy hash): equal timing either way.
        valid = await self.hasher.verify(password, user.hashed_password if user else None)
        if user is None or not valid or not user.is_active:
            raise BadCredentials
        auth_session = AuthSession(
            id=uuid.uuid4().hex, user_id=user.id, expires_at=utcnow() + self.refresh_lifetime
        )
        refresh = new_refresh_token()
        async with self.db.session() as session:
            await SessionRepository(session).create(auth_session, hash_refresh_token(refresh))
            await session.commit()
        return self._issue(user.id, auth_session.id, refresh)

    async def refresh(self, refresh_token: str) -> IssuedTokens:
        async with self.db.session() as session:
            sessions = SessionRepository(session)
            found = await sessions.find_token(hash_refresh_token(refresh_token))
            if found is None:
                raise InvalidRefreshToken
            token, auth_session, user = found
            if (
                auth_session.revoked_at is not None
                or auth_session.expires_at <= utcnow()
                or not user.is_active
            ):
                raise InvalidRefreshToken
            if token.used_at is not None or not await sessions.spend(token.id):
                # A spent token came back: it was stolen or replayed. End the whole login session, so
                # whoever holds the newest token of the family (possibly the thief) is logged out too.
                await sessions.revoke(auth_session.id)
                await session.commit()
                raise InvalidRefreshToken
            refresh = new_refresh_token()
            await sessions.add_token(auth_session.id, hash_refresh_token(refresh))
            await session.commit()
        return self._issue(user.id, auth_session.id, refresh)

    async def logout(self, principal: Principal) -> None:
        """End the caller's login session (a person logged in; the route takes no API key)."""
        if principal.session_id is None:
            raise Forbidden("API keys cannot do this: log in (an access token) instead.")
        async with self.db.session() as session:
            await SessionRepository(session).revoke(principal.session_id)
            await session.commit()

    def _issue(self, user_id: int, session_id: str, refresh: str) -> IssuedTokens:
        access, _ = self.codec.issue(user_id, session_id)
        return IssuedTokens(access, self.codec.lifetime, refresh)
