"""The shared dependencies: settings, the one DB session, the current user, pagination."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.errors import Forbidden, Unauthorized
from app.core.security import AccessClaims
from app.http.ratelimit import limit_user
from app.http.state import Resources
from app.services.auth import AuthService, Caller, authenticate, read_access_token
from app.services.inference import InferenceService
from app.services.items import ItemService
from app.services.prediction_log import PredictionHistory
from app.services.users import UserService

# Every dependency here is `async def`, even those that never await: FastAPI runs a plain `def`
# dependency in the thread pool, a thread hand-off per dependency per request (measured in
# docs/performance.md). None of them blocks, so they run on the event loop.


async def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_settings(request: Request) -> Settings:
    resources: Resources = request.app.state.resources
    return resources.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


# Requests that change nothing (RFC 9110 safe methods).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One ORM session per request, for the routes that need one (accounts, log-in, the prediction
    history). Services commit what they change before the response is built; whatever was not
    committed is rolled back when the session closes.

    On PostgreSQL a safe request's session runs in autocommit: each of its statements sees what was
    committed before it started, exactly as under the READ COMMITTED transaction it would otherwise
    open, without the BEGIN and ROLLBACK round trips around it (docs/performance.md).
    """
    resources: Resources = request.app.state.resources
    async with resources.session_factory() as session:
        if request.method in SAFE_METHODS and resources.engine.dialect.name == "postgresql":
            await session.connection(execution_options=_AUTOCOMMIT)
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_auth_service(session: SessionDep, request: Request) -> AuthService:
    resources: Resources = request.app.state.resources
    return AuthService(
        session,
        resources.hasher,
        resources.codec,
        timedelta(seconds=resources.settings.refresh_token_expire_seconds),
    )


AuthServiceDep = Annotated[AuthService, Depends(get_auth_service)]


async def get_user_service(session: SessionDep, request: Request) -> UserService:
    return UserService(session, request.app.state.resources.hasher)


UserServiceDep = Annotated[UserService, Depends(get_user_service)]


async def get_item_service(request: Request) -> ItemService:
    # No session: the item operations take a pooled connection each, for their statements only.
    return ItemService(request.app.state.resources.engine)


ItemServiceDep = Annotated[ItemService, Depends(get_item_service)]


class _BearerClaims(OAuth2PasswordBearer):
    """The claims of the request's access token: present, well-formed, correctly signed, unexpired,
    for this issuer and audience, and counted against the user's rate limit; not yet checked
    against the database.

    For the hot item routes only (read one, list, create), whose one statement checks the user and
    login session itself (app.services.items): a route that takes these claims must hand them to
    such a statement. Every other route takes the caller (`CurrentUser`). Both are the one OAuth2
    password flow of the OpenAPI document (Swagger UI's Authorize button).
    """

    def __init__(self) -> None:
        super().__init__(tokenUrl="/api/v1/auth/token", scheme_name="OAuth2PasswordBearer", auto_error=False)

    async def __call__(self, request: Request) -> AccessClaims:  # type: ignore[override]
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("Not authenticated: send an access token as `Authorization: Bearer`.")
        resources: Resources = request.app.state.resources
        claims = read_access_token(resources.codec, token)
        await limit_user(request, claims)
        request.state.user_id = claims.user_id
        return claims


class _BearerCaller(_BearerClaims):
    """Every other authenticated route's one dependency: the caller behind the bearer token, its
    claims checked against the database (active user, live login session) on a connection of its
    own, at every request. One dependency, not two (each dependency FastAPI solves costs CPU on
    every request): no token is a 401 before anything else is spent.
    """

    async def __call__(self, request: Request) -> Caller:  # type: ignore[override]
        claims = await super().__call__(request)
        return await authenticate(request.app.state.resources.engine, claims)


get_claims = _BearerClaims()
get_principal = _BearerCaller()

# The access token's claims, for the routes whose statement checks them (see _BearerClaims).
TokenClaims = Annotated[AccessClaims, Depends(get_claims)]

# The caller and their login session (`session_id`); one name for each use.
PrincipalDep = Annotated[Caller, Depends(get_principal)]
CurrentUser = Annotated[Caller, Depends(get_principal)]


async def get_admin(user: CurrentUser) -> Caller:
    if not user.is_admin:
        raise Forbidden("This operation needs an admin account.")
    return user


AdminUser = Annotated[Caller, Depends(get_admin)]


class OffsetPage:
    __slots__ = ("limit", "offset")

    def __init__(self, offset: int = 0, limit: int = 20) -> None:
        self.offset = offset
        self.limit = limit


async def get_offset_page(
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="Items to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=100, description="Items to return (at most 100).")] = 20,
) -> OffsetPage:
    return OffsetPage(offset, limit)


OffsetPageDep = Annotated[OffsetPage, Depends(get_offset_page)]


async def get_inference(request: Request) -> InferenceService:
    resources: Resources = request.app.state.resources
    return InferenceService(resources.registry, resources.prediction_log, lambda: _disconnected(request))


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away. The body has been read by then, so the server's next
    message is `http.disconnect` (uvicorn sends it when the connection closes, or once the
    response is complete)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


InferenceDep = Annotated[InferenceService, Depends(get_inference)]


async def get_prediction_history(session: SessionDep) -> PredictionHistory:
    return PredictionHistory(session)


PredictionHistoryDep = Annotated[PredictionHistory, Depends(get_prediction_history)]


# The opaque cursor of every cursor-paginated list: what `next_cursor` returned, nothing else.
CursorQuery = Annotated[
    str | None,
    Query(max_length=64, pattern=r"^[A-Za-z0-9_-]*$", description="`next_cursor` of the previous page."),
]
