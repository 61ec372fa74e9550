"""Queries on users and on their login sessions and refresh tokens."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypedDict, cast

from sqlalchemy import Select, Table, bindparam, func, or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.emails import canonical_email
from app.core.errors import Unauthorized
from app.core.security import AccessClaims, Principal
from app.db.statements import Statements
from app.models import ApiKey, AuthSession, RefreshToken, User
from app.models.base import utcnow


class DuplicateEmail(Exception):
    """The email is already registered."""


_users = cast(Table, User.__table__)
_sessions = cast(Table, AuthSession.__table__)
_keys = cast(Table, ApiKey.__table__)


def _in_live_session(*columns: Any) -> Select[Any]:
    """The user behind an access token: active, and the token's login session neither revoked nor
    expired (parameters b_user, b_session, b_now)."""
    return (
        select(*columns)
        .join_from(_users, _sessions, _sessions.c.user_id == _users.c.id)
        .where(
            _users.c.id == bindparam("b_user"),
            _users.c.is_active.is_(true()),
            _sessions.c.id == bindparam("b_session"),
            _sessions.c.revoked_at.is_(None),
            _sessions.c.expires_at > bindparam("b_now", type_=_sessions.c.expires_at.type),
        )
    )


def _with_live_key(*columns: Any) -> Select[Any]:
    """The owner of an API key: active, and the key neither revoked nor expired (parameters
    b_user, b_key, b_now). The key is matched by its stored hash (unique), so the check stands for
    this very key: never for a key or a user that was given the same ids later."""
    return (
        select(*columns)
        .join_from(_users, _keys, _keys.c.user_id == _users.c.id)
        .where(
            _users.c.id == bindparam("b_user"),
            _users.c.is_active.is_(true()),
            _keys.c.key_hash == bindparam("b_key"),
            _keys.c.revoked_at.is_(None),
            or_(
                _keys.c.expires_at.is_(None),
                _keys.c.expires_at > bindparam("b_now", type_=_keys.c.expires_at.type),
            ),
        )
    )


# Core statements built once (no statement building or cache-key work per request) that return
# the user's public columns, never the password hash; by login session (False) or by API key (True).
_PUBLIC = (_users.c.id, _users.c.email, _users.c.is_active, _users.c.is_admin, _users.c.created_at)
_ACTIVE = {False: _in_live_session(*_PUBLIC), True: _with_live_key(*_PUBLIC)}
# The same check as a subquery that the hot item statements join (app.repositories.items): one
# row (caller_id, caller_is_admin) when the caller's user and login session (or key) are live,
# none otherwise, so the check and the work are one statement, one round trip.
CALLERS = {
    by_key: check(_users.c.id.label("caller_id"), _users.c.is_admin.label("caller_is_admin")).subquery(
        "caller"
    )
    for by_key, check in ((False, _in_live_session), (True, _with_live_key))
}


class _CallerRow(TypedDict):
    """The user behind live credentials, as the check reads them (never the password hash)."""

    id: int
    email: str
    is_active: bool
    is_admin: bool
    created_at: datetime


class Access:
    """A principal's credentials as the checking statements take them: the parameters of
    `CALLERS[by_key]`. The one reader of a `Principal`'s credentials (app.core.security): whatever
    runs with an `Access` checks the caller's user and login session (or key) in its own statement,
    at every request."""

    __slots__ = ("_principal", "by_key", "params")

    def __init__(self, principal: Principal) -> None:
        # The one reader, by design (tests/unit/test_unchecked_principal.py).
        credentials = principal._credentials
        self._principal = principal
        if isinstance(credentials, AccessClaims):
            self.by_key = False
            self.params = {
                "b_user": credentials.user_id,
                "b_session": credentials.session_id,
                "b_now": utcnow(),
            }
        else:
            self.by_key = True
            self.params = {"b_user": credentials.user_id, "b_key": credentials.digest, "b_now": utcnow()}

    def refusal(self) -> Unauthorized:
        """The 401 to answer when a checking statement returned no row (`NoCaller`)."""
        return self._principal.refusal()


class NoCaller(Exception):
    """The credentials' user is inactive or gone, or their login session (or key) revoked or expired."""


async def check_principal(db: Statements, access: Access) -> None:
    """One round trip per authenticated request, so a logout, a key's revocation, a deactivation or
    a deletion ends the user's access tokens (or the key) at their next request, on every replica;
    `NoCaller` if it did. The principal can be read from then on."""
    row = cast(_CallerRow | None, await db.one(_ACTIVE[access.by_key], access.params))
    if row is None or row["id"] != access.params["b_user"]:
        raise NoCaller
    principal = access._principal
    principal._confirm((row["id"], row["email"], row["is_active"], row["is_admin"], row["created_at"]))


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, user_id: int) -> User | None:
        return await self.session.get(User, user_id)

    async def get_by_email(self, email: str) -> User | None:
        """By the address as typed: looked up in its one normal form (app.core.emails)."""
        return await self.session.scalar(select(User).where(User.email == canonical_email(email)))

    async def add(self, user: User) -> User:
        self.session.add(user)
        try:
            await self.session.flush()
        except IntegrityError as exc:
            raise DuplicateEmail(user.email) from exc
        return user

    async def update(self, user: User, values: dict[str, Any]) -> User:
        for key, value in values.items():
            setattr(user, key, value)
        try:
            await self.session.flush()
        except IntegrityError as exc:
            raise DuplicateEmail(str(values.get("email"))) from exc
        return user

    async def lock(self, user_id: int) -> None:
        """Hold the user's row until the transaction ends: a write that changes nothing, so it
        locks on every backend (the row on PostgreSQL, the database on SQLite, where a read alone
        would not keep another writer out until this one commits)."""
        await self.session.execute(update(User).where(User.id == user_id).values(updated_at=User.updated_at))

    async def delete(self, user: User) -> None:
        await self.session.delete(user)
        await self.session.flush()

    async def page(self, offset: int, limit: int) -> tuple[Sequence[User], int]:
        total = await self.session.scalar(select(func.count()).select_from(User)) or 0
        rows = await self.session.scalars(select(User).order_by(User.id).offset(offset).limit(limit))
        return rows.all(), total


class SessionRepository:
    """Login sessions and the rotation of their refresh tokens."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(self, auth_session: AuthSession, first_token_hash: str) -> None:
        self.session.add(auth_session)
        self.session.add(RefreshToken(session_id=auth_session.id, token_hash=first_token_hash))
        await self.session.flush()

    async def find_token(self, token_hash: str) -> tuple[RefreshToken, AuthSession, User] | None:
        row = (
            await self.session.execute(
                select(RefreshToken, AuthSession, User)
                .join(AuthSession, AuthSession.id == RefreshToken.session_id)
                .join(User, User.id == AuthSession.user_id)
                .where(RefreshToken.token_hash == token_hash)
            )
        ).first()
        return None if row is None else (row[0], row[1], row[2])

    async def spend(self, token_id: int) -> bool:
        """Mark a refresh token used. False when another request spent it first (a race or a replay)."""
        result = await self.session.execute(
            update(RefreshToken)
            .where(RefreshToken.id == token_id, RefreshToken.used_at.is_(None))
            .values(used_at=utcnow())
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def add_token(self, session_id: str, token_hash: str) -> None:
        self.session.add(RefreshToken(session_id=session_id, token_hash=token_hash))
        await self.session.flush()

    async def revoke(self, session_id: str) -> None:
        await self.session.execute(
            update(AuthSession)
            .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )

    async def revoke_all_for_user(self, user_id: int) -> None:
        await self.session.execute(
            update(AuthSession)
            .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
