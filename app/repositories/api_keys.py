"""Queries on API keys. Every query on a user's keys takes the owner: another user's key is simply
not found."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TypedDict, cast

from sqlalchemy import Table, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.statements import Statements
from app.models import ApiKey
from app.models.base import utcnow

_keys = cast(Table, ApiKey.__table__)

# The key behind a stored hash: what never changes about it (revocation and the owner's state are
# checked at every request by app.repositories.users.CALLERS), and whether it is revoked now.
_BY_HASH = select(_keys.c.id, _keys.c.user_id, _keys.c.scopes, _keys.c.expires_at, _keys.c.revoked_at).where(
    _keys.c.key_hash == bindparam("b_hash")
)
# last_used_at only ever moves forward, whichever replica writes last.
_TOUCH = (
    update(_keys)
    .where(
        _keys.c.id == bindparam("b_id"),
        or_(_keys.c.last_used_at.is_(None), _keys.c.last_used_at < bindparam("b_used")),
    )
    .values(last_used_at=bindparam("b_used"))
)


class KeyRow(TypedDict):
    id: int
    user_id: int
    scopes: str
    expires_at: datetime | None
    revoked_at: datetime | None


async def by_hash(db: Statements, key_hash: str) -> KeyRow | None:
    return cast(KeyRow | None, await db.one(_BY_HASH, {"b_hash": key_hash}))


class ApiKeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, key: ApiKey) -> ApiKey:
        self.session.add(key)
        await self.session.flush()
        return key

    async def of_user(self, user_id: int) -> Sequence[ApiKey]:
        """The user's keys, revoked ones included (they say when), newest first."""
        rows = await self.session.scalars(
            select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.id.desc())
        )
        return rows.all()

    async def live_count(self, user_id: int, now: datetime) -> int:
        """How many of the user's keys are neither revoked nor expired at `now`."""
        count = await self.session.scalar(
            select(func.count())
            .select_from(ApiKey)
            .where(
                ApiKey.user_id == user_id,
                ApiKey.revoked_at.is_(None),
                or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
            )
        )
        return count or 0

    async def revoke_all_of_user(self, user_id: int) -> None:
        """Revoke every live key of the user (deactivation: for good, as it ends their logins)."""
        await self.session.execute(
            update(ApiKey)
            .where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )

    async def get(self, user_id: int, key_id: int) -> ApiKey | None:
        return await self.session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id))

    async def revoke(self, key: ApiKey) -> ApiKey:
        if key.revoked_at is None:
            key.revoked_at = utcnow()
            await self.session.flush()
        return key

    async def touch(self, used: Mapping[int, datetime]) -> None:
        """Record when each key was last used (one statement, executed for every key)."""
        await self.session.execute(
            _TOUCH, [{"b_id": key_id, "b_used": when} for key_id, when in used.items()]
        )
