"""The shared dependencies: the caller (or an access token's unverified claims), the services,
pagination. Each has one name.

Every dependency here is `async def`, even those that never await: FastAPI runs a plain `def`
dependency in the thread pool, a thread hand-off per dependency per request (measured in
docs/performance.md). None of them blocks, so they run on the event loop.
"""

from __future__ import annotations

import hmac
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import OAuth2PasswordBearer

from app.core.errors import Forbidden, Unauthorized
from app.core.security import UnverifiedClaims
from app.http.ratelimit import limit_user
from app.http.state import model_server_state_of, state_of
from app.services.auth import AuthService, Caller, authenticate, read_access_token
from app.services.inference import InferenceService
from app.services.items import ItemService
from app.services.prediction_log import PredictionHistory
from app.services.users import UserService

# The largest page any list returns (`limit`), and the furthest an offset page reaches.
PAGE_SIZE_MAX = 100
OFFSET_MAX = 1_000_000


class _BearerClaims(OAuth2PasswordBearer):
    """The request's access token, present, well-formed, correctly signed, unexpired, for this
    issuer and audience, and counted against its user's rate limit; not yet checked against the
    database: `UnverifiedClaims`, which only a repository statement that checks them can read.

    For the hot item routes only (read one, list, create), whose one statement checks the user and
    login session itself (app.repositories.items). Every other route takes the caller
    (`CurrentUser`). Both are the one OAuth2 password flow of the OpenAPI document (Swagger UI's
    Authorize button).
    """

    def __init__(self) -> None:
        super().__init__(tokenUrl="/api/v1/auth/token", scheme_name="OAuth2PasswordBearer", auto_error=False)

    async def __call__(self, request: Request) -> UnverifiedClaims:  # type: ignore[override]
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("Not authenticated: send an access token as `Authorization: Bearer`.")
        claims = read_access_token(state_of(request).resources.codec, token)
        await limit_user(request, claims)
        request.state.user_id = claims.user_id
        return UnverifiedClaims(claims)


class _BearerCaller(_BearerClaims):
    """Every other authenticated route's one dependency: the caller behind the bearer token, its
    claims checked against the database (active user, live login session) on a connection of its
    own, at every request. One dependency, not two (each dependency FastAPI solves costs CPU on
    every request): no token is a 401 before anything else is spent.
    """

    async def __call__(self, request: Request) -> Caller:  # type: ignore[override]
        claims = await super().__call__(request)
        return await authenticate(state_of(request).resources.db, claims)


get_claims = _BearerClaims()
get_caller = _BearerCaller()

# An access token's claims, unverified: for the routes whose statement checks them (see above).
TokenClaims = Annotated[UnverifiedClaims, Depends(get_claims)]

# The authenticated caller and their login session (`session_id`).
CurrentUser = Annotated[Caller, Depends(get_caller)]


async def get_oip_caller(user: CurrentUser) -> int:
    """The Open Inference Protocol routes' caller: the id predictions are logged against. The model
    server (app.model_server) replaces this dependency with its service-token check."""
    return user.id


OipCaller = Annotated[int, Depends(get_oip_caller)]


async def get_admin(user: CurrentUser) -> Caller:
    if not user.is_admin:
        raise Forbidden("This operation needs an admin account.")
    return user


AdminUser = Annotated[Caller, Depends(get_admin)]


async def get_auth_service(request: Request) -> AuthService:
    resources = state_of(request).resources
    refresh_lifetime = timedelta(seconds=state_of(request).settings.refresh_token_expire_seconds)
    return AuthService(resources.db, resources.hasher, resources.codec, refresh_lifetime)


AuthServiceDep = Annotated[AuthService, Depends(get_auth_service)]


async def get_user_service(request: Request) -> UserService:
    resources = state_of(request).resources
    return UserService(resources.db, resources.hasher)


UserServiceDep = Annotated[UserService, Depends(get_user_service)]


async def get_item_service(request: Request) -> ItemService:
    return ItemService(state_of(request).resources.db)


ItemServiceDep = Annotated[ItemService, Depends(get_item_service)]


async def get_prediction_history(request: Request) -> PredictionHistory:
    return PredictionHistory(state_of(request).resources.db)


PredictionHistoryDep = Annotated[PredictionHistory, Depends(get_prediction_history)]


async def get_inference(request: Request) -> InferenceService:
    resources = state_of(request).resources
    return InferenceService(resources.registry, resources.prediction_log, lambda: _disconnected(request))


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away. The body has been read by then, so the server's next
    message is `http.disconnect` (uvicorn sends it when the connection closes, or once the
    response is complete)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


InferenceDep = Annotated[InferenceService, Depends(get_inference)]


# --- the model server's replacements (app.model_server): a service token, no users, no log ---


async def check_service_token(request: Request) -> int:
    """The model server's caller check: `Authorization: Bearer <MODEL_SERVER_TOKEN>` (compared in
    constant time). No token configured: every caller is let in (development only; a production
    model server refuses to start without one). Its predictions are logged by the web tier, under
    the web tier's user; here the caller id is 0."""
    expected = model_server_state_of(request).token
    if expected is None:
        return 0
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("Send the model server's service token as `Authorization: Bearer`.")
    return 0


async def get_model_server_inference(request: Request) -> InferenceService:
    registry = model_server_state_of(request).registry
    return InferenceService(registry, None, lambda: _disconnected(request))


class OffsetPage:
    __slots__ = ("limit", "offset")

    def __init__(self, offset: int = 0, limit: int = 20) -> None:
        self.offset = offset
        self.limit = limit


async def get_offset_page(
    offset: Annotated[int, Query(ge=0, le=OFFSET_MAX, description="Items to skip.")] = 0,
    limit: Annotated[
        int, Query(ge=1, le=PAGE_SIZE_MAX, description=f"Items to return (at most {PAGE_SIZE_MAX}).")
    ] = 20,
) -> OffsetPage:
    return OffsetPage(offset, limit)


OffsetPageDep = Annotated[OffsetPage, Depends(get_offset_page)]

# The size of a cursor page.
PageLimit = Annotated[
    int, Query(ge=1, le=PAGE_SIZE_MAX, description=f"Items to return (at most {PAGE_SIZE_MAX}).")
]

# The opaque cursor of every cursor-paginated list: what `next_cursor` returned, nothing else.
CursorQuery = Annotated[
    str | None,
    Query(max_length=64, pattern=r"^[A-Za-z0-9_-]*$", description="`next_cursor` of the previous page."),
]
