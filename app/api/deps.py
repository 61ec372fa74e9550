"""The shared dependencies: settings, the one DB session, the current user, pagination."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.exceptions import Forbidden, Unauthorized
from app.core.resources import Resources
from app.models import User
from app.services.auth import AuthService
from app.services.items import ItemService
from app.services.users import UserService

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)


def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


def get_settings(resources: ResourcesDep) -> Settings:
    return resources.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(resources: ResourcesDep) -> AsyncIterator[AsyncSession]:
    """One session per request. Services commit what they change before the response is built;
    whatever was not committed is rolled back when the session closes."""
    async with resources.session_factory() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def get_auth_service(session: SessionDep, resources: ResourcesDep) -> AuthService:
    return AuthService(
        session,
        resources.hasher,
        resources.codec,
        timedelta(seconds=resources.settings.refresh_token_expire_seconds),
    )


AuthServiceDep = Annotated[AuthService, Depends(get_auth_service)]


def get_user_service(session: SessionDep, resources: ResourcesDep) -> UserService:
    return UserService(session, resources.hasher)


UserServiceDep = Annotated[UserService, Depends(get_user_service)]


def get_item_service(session: SessionDep) -> ItemService:
    return ItemService(session)


ItemServiceDep = Annotated[ItemService, Depends(get_item_service)]


class Principal:
    """The authenticated caller: the user and the login session their access token belongs to."""

    __slots__ = ("session_id", "user")

    def __init__(self, user: User, session_id: str) -> None:
        self.user = user
        self.session_id = session_id


async def get_principal(
    request: Request,
    auth: AuthServiceDep,
    token: Annotated[str | None, Depends(oauth2_scheme)],
) -> Principal:
    if not token:
        raise Unauthorized("Not authenticated: send an access token as `Authorization: Bearer`.")
    user, session_id = await auth.authenticate(token)
    request.state.user_id = user.id
    return Principal(user, session_id)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_current_user(principal: PrincipalDep) -> User:
    return principal.user


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_admin(user: CurrentUser) -> User:
    if not user.is_admin:
        raise Forbidden("This operation needs an admin account.")
    return user


AdminUser = Annotated[User, Depends(get_admin)]


class OffsetPage:
    def __init__(
        self,
        offset: Annotated[int, Query(ge=0, le=1_000_000, description="Items to skip.")] = 0,
        limit: Annotated[int, Query(ge=1, le=100, description="Items to return (at most 100).")] = 20,
    ) -> None:
        self.offset = offset
        self.limit = limit


OffsetPageDep = Annotated[OffsetPage, Depends()]
