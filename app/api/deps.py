"""The shared dependencies: who is calling (`Principal`, by the scope a route needs), the services,
pagination. Each has one name.

Every dependency here is `async def`, even those that never await: FastAPI runs a plain `def`
dependency in the thread pool, a thread hand-off per dependency per request (measured in
docs/performance.md). None of them blocks, so they run on the event loop.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Query, Request, Security
from fastapi.security import OAuth2PasswordBearer

from app.core.errors import Forbidden, Unauthorized
from app.core.security import Credentials, Principal, RefusedApiKey, Scope, is_api_key
from app.http.ratelimit import limit_caller, limit_refused_key
from app.http.state import state_of
from app.services.api_keys import ApiKeyService, MissingScope
from app.services.auth import AuthService, authenticate, read_access_token
from app.services.feedback import FeedbackService
from app.services.inference import InferenceService
from app.services.items import ItemService
from app.services.jobs import JobService
from app.services.model_fleet import FleetRepository, ModelFleet, ModelRepository
from app.services.prediction_log import PredictionHistory
from app.services.quality import QualityService
from app.services.users import UserService

# The largest page any list returns (`limit`), and the furthest an offset page reaches.
PAGE_SIZE_MAX = 100
OFFSET_MAX = 1_000_000


class Bearer(OAuth2PasswordBearer):
    """Who is calling (`Principal`), from the request's credentials, sent as `Authorization:
    Bearer`: an access token (a person logged in, the OAuth2 password flow) or an API key (a
    program; `mlk_...`). Both are read here, once:

    - an access token must be well-formed, correctly signed, unexpired, for this issuer and
      audience; it may do whatever its user may (scopes do not apply to it);
    - an API key must be one this service made and stored, unexpired, and hold `scope`, the one
      the route needs (`Security(..., scopes=[...])`); with no scope the route is not open to keys
      at all (403): account management, keys themselves, log-out;

    then counted against its user's (or key's) rate limit (app.http.ratelimit), then checked
    against the database (active user, live login session or key) on a connection of its own. One
    dependency, not two (each dependency FastAPI solves costs CPU on every request): no credentials
    is a 401 before anything else is spent.

    `checked_by_the_service`: the check is left to the service, which receives the principal
    unchecked (who it is cannot be read until then): the item service, whose hottest statements
    check it in their own round trip (app.repositories.items).

    One instance per scope, the scope fixed when it is made, rather than one reading FastAPI's
    `SecurityScopes` at every request: building that object per request cost 3-4 us of a 225 us
    cached read (`bench.profile_hot --kind get_item`). `Security(..., scopes=[scope])` still puts
    the scope in the OpenAPI document, where the key is its own scheme, `APIKey` (app.api.openapi).
    """

    def __init__(self, scope: Scope | None = None, *, checked_by_the_service: bool = False) -> None:
        super().__init__(tokenUrl="/api/v1/auth/token", scheme_name="OAuth2PasswordBearer", auto_error=False)
        self.scopes: list[str] = [] if scope is None else [scope]
        self.checked_by_the_service = checked_by_the_service

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        principal = Principal(await self.read(request))
        if not self.checked_by_the_service:
            await authenticate(state_of(request).resources.db, principal)
        return principal

    async def read(self, request: Request) -> Credentials:
        scheme, _, credential = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not credential:
            raise Unauthorized(
                "Not authenticated: send an access token or an API key as `Authorization: Bearer`."
            )
        resources = state_of(request).resources
        claims: Credentials
        if is_api_key(credential):
            try:
                claims = await resources.keys.identify(credential)
            except RefusedApiKey as refused:
                await limit_refused_key(request, refused)  # 429 past the per-key limit
                raise
            request.state.api_key_id = claims.key_id  # in the access log line
            if not self.scopes:
                raise Forbidden("API keys cannot do this: log in (an access token) instead.")
            for scope in self.scopes:
                if scope not in claims.scopes:
                    raise MissingScope(scope)
            resources.keys.used(claims)
        else:
            claims = read_access_token(resources.codec, credential)
        await limit_caller(request, claims)
        request.state.user_id = claims.user_id
        return claims


def _caller(scope: Scope, *, checked_by_the_service: bool = False) -> object:
    return Security(Bearer(scope, checked_by_the_service=checked_by_the_service), scopes=[scope])


# A person logged in (an access token; API keys are refused with 403): account management, API
# keys, log-out.
CurrentUser = Annotated[Principal, Depends(Bearer())]
# The caller, by access token or by an API key holding the scope named. One per scope: a route
# says what it does by the one it takes.
Predictor = Annotated[Principal, _caller(Scope.PREDICT)]
ModelReader = Annotated[Principal, _caller(Scope.MODELS_READ)]
PredictionReader = Annotated[Principal, _caller(Scope.PREDICTIONS_READ)]
FeedbackWriter = Annotated[Principal, _caller(Scope.FEEDBACK_WRITE)]
# The item routes' caller, checked by the item service itself (see `Bearer`).
ItemReader = Annotated[Principal, _caller(Scope.ITEMS_READ, checked_by_the_service=True)]
ItemWriter = Annotated[Principal, _caller(Scope.ITEMS_WRITE, checked_by_the_service=True)]
JobReader = Annotated[Principal, _caller(Scope.JOBS_READ)]
JobWriter = Annotated[Principal, _caller(Scope.JOBS_WRITE)]


async def get_admin(user: Annotated[Principal, _caller(Scope.ADMIN)]) -> Principal:
    if not user.is_admin:
        raise Forbidden("This operation needs an admin account.")
    return user


# An admin, logged in or by a key with the `admin` scope (only an admin can make one).
AdminUser = Annotated[Principal, Depends(get_admin)]


# The callers of the Open Inference Protocol's routes on the web tier (app.api.oip.oip_router), as
# the id their predictions are logged against; the model server passes its service-token check.
async def model_reader_id(user: ModelReader) -> int:
    return user.id


async def predictor_id(user: Predictor) -> int:
    return user.id


async def admin_id(user: AdminUser) -> int:
    return user.id


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


async def get_job_service(request: Request) -> JobService:
    state = state_of(request)
    resources = state.resources
    return JobService(resources.db, resources.registry, state.settings, resources.jobs.enqueue)


JobServiceDep = Annotated[JobService, Depends(get_job_service)]


async def get_prediction_history(request: Request) -> PredictionHistory:
    return PredictionHistory(state_of(request).resources.db)


PredictionHistoryDep = Annotated[PredictionHistory, Depends(get_prediction_history)]


async def get_feedback(request: Request) -> FeedbackService:
    state = state_of(request)
    return FeedbackService(
        state.resources.db, state.resources.registry, state.settings.prediction_log_flush_ms / 1000
    )


FeedbackServiceDep = Annotated[FeedbackService, Depends(get_feedback)]


async def get_quality(request: Request) -> QualityService:
    return QualityService(state_of(request).resources.db)


QualityServiceDep = Annotated[QualityService, Depends(get_quality)]


async def get_inference(request: Request) -> InferenceService:
    resources = state_of(request).resources
    return InferenceService(
        resources.registry,
        resources.prediction_log,
        lambda: until_disconnected(request),
        shadows=resources.shadows,
    )


async def until_disconnected(request: Request) -> None:
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
    """The repository extension of `/v2` on the web tier: fleet-wide (the model server's is its own)."""
    return FleetRepository(state_of(request).resources.fleet)


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
