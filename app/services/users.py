"""User profile and administration."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Conflict, NotFound, Unauthorized
from app.core.security import PasswordHasher, Principal
from app.db.database import Database
from app.models import User
from app.repositories.api_keys import ApiKeyRepository
from app.repositories.users import DuplicateEmail, SessionRepository, UserRepository
from app.services.auth import EmailTaken


class UserNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("User not found.")


class WrongPassword(Unauthorized):
    def __init__(self) -> None:
        super().__init__("The current password is incorrect.")


class LastAdmin(Conflict):
    def __init__(self) -> None:
        super().__init__("An admin cannot remove their own admin rights or account.")


class UserService:
    """Each operation opens the ORM session its queries need, loads what it changes and commits;
    password checks and hashing run outside it, so no connection waits on Argon2."""

    def __init__(self, db: Database, hasher: PasswordHasher) -> None:
        self.db = db
        self.hasher = hasher

    async def get(self, user_id: int) -> User:
        async with self.db.session(read_only=True) as session:
            return await _found(UserRepository(session), user_id)

    async def page(self, offset: int, limit: int) -> tuple[Sequence[User], int]:
        async with self.db.session(read_only=True) as session:
            return await UserRepository(session).page(offset, limit)

    async def update(self, user_id: int, values: dict[str, Any], *, actor: Principal) -> User:
        """An admin's change to a user. Deactivating a user ends all their login sessions and revokes
        all their API keys, at once and for good: re-activating them brings neither back (they log
        in again and make new keys), so every process agrees on every key at its next request."""
        if actor.id == user_id and (values.get("is_admin") is False or values.get("is_active") is False):
            raise LastAdmin
        async with self.db.session() as session:
            user = await _found(UserRepository(session), user_id)
            return await _update(session, user, values)

    async def update_me(self, caller: Principal, current_password: str, values: dict[str, Any]) -> User:
        """The caller's own changes: the current password first, as for a password change (a
        stolen access token alone must not move the account to another email)."""
        await self._check_password(caller, current_password)
        async with self.db.session() as session:
            return await _update(session, await _me(UserRepository(session), caller), values)

    async def change_password(self, caller: Principal, current: str, new: str) -> None:
        await self._check_password(caller, current)
        hashed = await self.hasher.hash(new)
        async with self.db.session() as session:
            user = await _me(UserRepository(session), caller)
            user.hashed_password = hashed
            # Every other login of this user ends; the caller logs in again with the new password.
            await SessionRepository(session).revoke_all_for_user(user.id)
            await session.commit()

    async def delete(self, user_id: int, *, actor: Principal) -> None:
        if actor.id == user_id:
            raise LastAdmin
        async with self.db.session() as session:
            users = UserRepository(session)
            await users.delete(await _found(users, user_id))
            await session.commit()

    async def ensure_admin(self, email: str, password: str) -> tuple[User, bool]:
        """The account `email` as an active admin: created with `password` if it does not exist,
        otherwise promoted and reactivated (its password unchanged); and whether it was created.
        `email` is already in its one normal form (app.core.emails)."""
        hashed = await self.hasher.hash(password)
        async with self.db.session() as session:
            users = UserRepository(session)
            user = await users.get_by_email(email)
            created = user is None
            if user is None:
                user = await users.add(User(email=email, hashed_password=hashed, is_admin=True))
            user.is_admin = True
            user.is_active = True
            await session.commit()
        return user, created

    async def _check_password(self, caller: Principal, password: str) -> None:
        async with self.db.session(read_only=True) as session:
            hashed = (await _me(UserRepository(session), caller)).hashed_password
        if not await self.hasher.verify(password, hashed):
            raise WrongPassword


async def _found(users: UserRepository, user_id: int) -> User:
    user = await users.get(user_id)
    if user is None:
        raise UserNotFound
    return user


async def _me(users: UserRepository, caller: Principal) -> User:
    """The caller's own account. Gone since the request was authenticated (deleted by an admin in
    between): the token no longer stands for anyone, a 401 as at the next request."""
    user = await users.get(caller.id)
    if user is None:
        raise caller.refusal()
    return user


async def _update(session: AsyncSession, user: User, values: dict[str, Any]) -> User:
    try:
        await UserRepository(session).update(user, values)
    except DuplicateEmail as exc:
        raise EmailTaken from exc
    if values.get("is_active") is False:
        await SessionRepository(session).revoke_all_for_user(user.id)
        await ApiKeyRepository(session).revoke_all_of_user(user.id)
    await session.commit()
    return user
