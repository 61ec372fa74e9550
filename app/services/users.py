"""User profile and administration."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Conflict, NotFound, Unauthorized
from app.core.security import InvalidAccessToken, PasswordHasher
from app.models import User
from app.repositories.users import DuplicateEmail, SessionRepository, UserRepository
from app.services.auth import Caller, EmailTaken


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
    def __init__(self, session: AsyncSession, hasher: PasswordHasher) -> None:
        self.session = session
        self.users = UserRepository(session)
        self.sessions = SessionRepository(session)
        self.hasher = hasher

    async def get(self, user_id: int) -> User:
        user = await self.users.get(user_id)
        if user is None:
            raise UserNotFound
        return user

    async def me(self, caller: Caller) -> User:
        """The caller's own account, to change it. Gone since the request was authenticated (deleted
        by an admin in between): the token no longer stands for anyone, a 401 as at the next request."""
        user = await self.users.get(caller.id)
        if user is None:
            raise InvalidAccessToken
        return user

    async def page(self, offset: int, limit: int) -> tuple[Sequence[User], int]:
        return await self.users.page(offset, limit)

    async def update(self, user: User, values: dict[str, Any], *, actor: Caller | None = None) -> User:
        if (
            actor is not None
            and actor.id == user.id
            and (values.get("is_admin") is False or values.get("is_active") is False)
        ):
            raise LastAdmin
        try:
            await self.users.update(user, values)
        except DuplicateEmail as exc:
            await self.session.rollback()
            raise EmailTaken from exc
        if values.get("is_active") is False:
            await self.sessions.revoke_all_for_user(user.id)
        await self.session.commit()
        return user

    async def update_me(self, user: User, current_password: str, values: dict[str, Any]) -> User:
        """The caller's own changes: the current password first, as for a password change (a
        stolen access token alone must not move the account to another email)."""
        if not await self.hasher.verify(current_password, user.hashed_password):
            raise WrongPassword
        return await self.update(user, values)

    async def change_password(self, user: User, current: str, new: str) -> None:
        if not await self.hasher.verify(current, user.hashed_password):
            raise WrongPassword
        user.hashed_password = await self.hasher.hash(new)
        # Every other login of this user ends; the caller logs in again with the new password.
        await self.sessions.revoke_all_for_user(user.id)
        await self.session.commit()

    async def delete(self, user: User, *, actor: Caller) -> None:
        if actor.id == user.id:
            raise LastAdmin
        await self.users.delete(user)
        await self.session.commit()
