"""The shared dependencies: the caller (or an access token's unverified claims) and what an API key
must hold to stand for it, the services, pagination. Each has one name.

Every dependency here is `async def`, even those that never await: FastAPI runs a plain `def`
dependency in the thread pool, a thread hand-off per dependency per request (measured in
docs/performance.md). None of them blocks, so they run on the event loop.
"""

from __future__ import annotations

import hmac
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Query, Request, Security
from fastapi.security import OAuth2PasswordBearer

from app.core.errors import Forbidden, Unauthorized
from app.core.security import AccessClaims, KeyClaims, RefusedApiKey, Scope, UnverifiedClaims, is_api_key
from app.http.ratelimit import limit_caller, limit_refused_key
from app.http.state import model_server_state_of, state_of
from app.services.api_keys import ApiKeyService, MissingScope
from app.services.auth import AuthService, Caller, SessionCaller, authenticate, read_access_token
from app.services.inference import InferenceService
from app.services.items import ItemService
from app.services.model_fleet import FleetRepository, LocalRepository, ModelFleet, ModelRepository
from app.services.prediction_log import PredictionHistory
from app.services.users import UserService

# The largest page any list returns (`limit`), and the furthest an offset page reaches.
PAGE_SIZE_MAX = 100
OFFSET_MAX = 1_000_000


class _Bearer(OAuth2PasswordBearer):
    """The request's credentials, sent as `Authorization: Bearer`: an access token (a person logged
    in, the OAuth2 password flow) or an API key (a program; `mlk_...`). Both are read here, once:

    - an access token must be well-formed, correctly signed, unexpired, for this issuer and
      audience; it may do whatever its user may (scopes do not apply to it);
    - an API key must be one this service made and stored, unexpired, and hold every scope the
      route declares (`Security(..., scopes=[...])`); a route that declares none is not open to
      keys at all (403): account management, keys themselves, log-out;

    then counted against its user's (or key's) rate limit. Not yet checked against the database.
    In the OpenAPI document the key is its own scheme, `APIKey`, listed with the scopes each
    operation needs (app.api.openapi).
    """

    def __init__(self) -> None:
        super().__init__(tokenUrl="/api/v1/auth/token", scheme_name="OAuth2PasswordBearer", auto_error=False)

    @staticmethod
    async def read(request: Request, scopes: list[str]) -> AccessClaims | KeyClaims:
        scheme, _, credential = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not credential:
            raise Unauthorized(
                "Not authenticated: send an access token or an API key as `Authorization: Bearer`."
            )
        resources = state_of(request).resources
        claims: AccessClaims | KeyClaims
        if is_api_key(credential):
            try:
                claims = await resources.keys.identify(credential)
            except RefusedApiKey as refused:
                await limit_refused_key(request, refused)  # 429 past the per-key limit
                raise
            request.state.api_key_id = claims.key_id  # in the access log line
            request.state.key_claims = claims  # for `refused_token_handler`, should the check refuse it
            _check_scopes(claims, scopes)
            resources.keys.used(claims)
        else:
            claims = read_access_token(resources.codec, credential)
        await limit_caller(request, claims)
        request.state.user_id = claims.user_id
        return claims


def _check_scopes(claims: KeyClaims, needed: list[str]) -> None:
    if not needed:
        raise Forbidden("API keys cannot do this: log in (an access token) instead.")
    for scope in needed:
        if scope not in claims.scopes:
            raise MissingScope(scope)


class BearerClaims(_Bearer):
    """An access token's (or an API key holding `scope`) claims, unverified: `UnverifiedClaims`,
    which only a repository statement that checks them can read. For the hot item routes only
    (read one, list, create), whose one statement checks the user and login session (or key)
    itself (app.repositories.items).

    One instance per scope, the scope fixed when it is made, rather than one reading FastAPI's
    `SecurityScopes` at every request: building that object per request cost 3-4 us of a 225 us
    cached read (`bench.profile_hot --kind get_item`). `Security(..., scopes=[scope])` still puts
    the scope in the OpenAPI document."""

    def __init__(self, scope: Scope) -> None:
        super().__init__()
        self.scopes: list[str] = [scope]

    async def __call__(self, request: Request) -> UnverifiedClaims:  # type: ignore[override]
        return UnverifiedClaims(await self.read(request, self.scopes))


class BearerCaller(_Bearer):
    """The caller behind an access token, or an API key holding `scope`, checked against the
    database (active user, live login session or key) on a connection of its own, at every request.
    One dependency, not two (each dependency FastAPI solves costs CPU on every request): no
    credentials is a 401 before anything else is spent. One instance per scope, as above."""

    def __init__(self, scope: Scope) -> None:
        super().__init__()
        self.scopes: list[str] = [scope]

    async def __call__(self, request: Request) -> Caller:  # type: ignore[override]
        claims = await self.read(request, self.scopes)
        return await authenticate(state_of(request).resources.db, UnverifiedClaims(claims))


class BearerSession(_Bearer):
    """A person logged in (an access token), never an API key: for managing the account itself."""

    async def __call__(self, request: Request) -> SessionCaller:  # type: ignore[override]
        caller = await authenticate(
            state_of(request).resources.db, UnverifiedClaims(await self.read(request, []))
        )
        if not isinstance(caller, SessionCaller):  # refused by `read` already; kept for the type
            raise Forbidden("API keys cannot do this: log in (an access token) instead.")
        return caller


get_session_caller = BearerSession()

# The authenticated person, logged in (an access token; API keys are refused with 403), and their
# login session (`session_id`): account management, API keys, log-out.
CurrentUser = Annotated[SessionCaller, Depends(get_session_caller)]


def _caller(scope: Scope) -> object:
    return Security(BearerCaller(scope), scopes=[scope])


def _claims(scope: Scope) -> object:
    return Security(BearerClaims(scope), scopes=[scope])


# The caller, by access token or by an API key holding the scope named. One per scope: a route
# says what it does by the one it takes.
Predictor = Annotated[Caller, _caller(Scope.PREDICT)]
ModelReader = Annotated[Caller, _caller(Scope.MODELS_READ)]
ItemReader = Annotated[Caller, _caller(Scope.ITEMS_READ)]
ItemWriter = Annotated[Caller, _caller(Scope.ITEMS_WRITE)]
PredictionReader = Annotated[Caller, _caller(Scope.PREDICTIONS_READ)]
# Unverified claims (see `BearerClaims`): for the routes whose statement checks them.
ItemReadClaims = Annotated[UnverifiedClaims, _claims(Scope.ITEMS_READ)]
ItemWriteClaims = Annotated[UnverifiedClaims, _claims(Scope.ITEMS_WRITE)]


# The Open Inference Protocol routes' caller: the id predictions are logged against, by access
# token or by an API key with the scope. The model server (app.model_server) replaces both with its
# service-token check.
async def get_oip_reader(user: ModelReader) -> int:
    return user.id


async def get_oip_predictor(user: Predictor) -> int:
    return user.id


OipReader = Annotated[int, Depends(get_oip_reader)]
OipPredictor = Annotated[int, Depends(get_oip_predictor)]


async def get_admin(user: Annotated[Caller, _caller(Scope.ADMIN)]) -> Caller:
    if not user.is_admin:
        raise Forbidden("This operation needs an admin account.")
    return user


# An admin, logged in or by a key with the `admin` scope (only an admin can make one).
AdminUser = Annotated[Caller, Depends(get_admin)]


# The repository extension's caller (`/v2/repository/...`): an admin; the model server's service
# token there.
async def get_oip_admin(user: AdminUser) -> int:
    return user.id


OipAdmin = Annotated[int, Depends(get_oip_admin)]


async def get_auth_service(request: Request) -> AuthService:
    resources = state_of(request).resources
    refresh_lifetime = timedelta(seconds=state_of(request).settings.refresh_token_expire_seconds)
    return AuthService(resources.db, resources.hasher, resources.codec, refresh_lifetime)


AuthServiceDep = Annotated[AuthService, Depends(get_auth_service)]


async def get_api_key_service(request: Request) -> ApiKeyService:
    state = state_of(request)
    return ApiKeyService(
        state.resources.db, state.resources.keys.codec, most_per_user=state.settings.api_keys_per_user
    )


ApiKeyServiceDep = Annotated[ApiKeyService, Depends(get_api_key_service)]


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


async def get_fleet(request: Request) -> ModelFleet:
    return state_of(request).resources.fleet


FleetDep = Annotated[ModelFleet, Depends(get_fleet)]


async def get_model_repository(request: Request) -> ModelRepository:
    """The repository extension of `/v2`: fleet-wide here; the model server's is its own."""
    return FleetRepository(state_of(request).resources.fleet)


ModelRepositoryDep = Annotated[ModelRepository, Depends(get_model_repository)]


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


async def get_model_server_repository(request: Request) -> ModelRepository:
    return LocalRepository(model_server_state_of(request).registry)


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
