"""The model server: the inference tier alone (`python -m app.cli model-server`).

The models of the manifest (ONNX Runtime in threads, the process pool, micro-batching: the same
`ModelRegistry` the web tier uses in process) behind the Open Inference Protocol at `/v2` (the
same routes as the web tier's, built by app.api.oip.oip_router with this server's registry and
its service-token check, below), with `/healthz`, `/readyz` and `/metrics`; nothing of users or
items. A shared service token (`MODEL_SERVER_TOKEN`) replaces the users' access tokens,
and the web tier, which logs every prediction against its user, points its manifest's models at
this server with `"executor": "remote"` (docs/models.md, docs/deployment.md).

Which versions it loads follows the fleet's desired state in the database (DATABASE_URL; read
only, app.services.model_fleet), as every web worker does; its repository extension
(`/v2/repository/...`) loads and unloads here alone, which is how a web tier has a version loaded
here before the state names it. Without a readable state it serves the manifest's seed.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request
from fastapi.middleware import Middleware

from app.api import health
from app.api.deps import until_disconnected
from app.api.oip import oip_router
from app.core.config import Settings, get_settings
from app.core.errors import Unauthorized
from app.core.logging import configure_logging
from app.db.database import Database
from app.db.engine import create_engine
from app.http.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from app.http.problems import install_exception_handlers
from app.http.redirects import relative_slash_redirects
from app.http.state import ModelServerState, model_server_state_of, registry_settings
from app.ml.registry import ModelRegistry
from app.observability.metrics import observe_model_batch
from app.services.inference import InferenceService
from app.services.model_fleet import LocalRepository, ModelFleet, ModelRepository

log = structlog.get_logger("app.model_server")


# --- what the model server passes to the /v2 routes (app.api.oip.oip_router) ---


async def service_token(request: Request) -> int:
    """Who may call: `Authorization: Bearer <MODEL_SERVER_TOKEN>` (compared in constant time). No
    token configured: every caller is let in (development only; a production model server refuses
    to start without one). Its predictions are logged by the web tier, under the web tier's user;
    here the caller id is 0."""
    expected = model_server_state_of(request).token
    if expected is None:
        return 0
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("Send the model server's service token as `Authorization: Bearer`.")
    return 0


async def local_inference(request: Request) -> InferenceService:
    """This process's models, with no prediction log (the web tier keeps it)."""
    registry = model_server_state_of(request).registry
    return InferenceService(registry, None, lambda: until_disconnected(request))


async def local_repository(request: Request) -> ModelRepository:
    """The repository extension in this process alone."""
    return LocalRepository(model_server_state_of(request).registry)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Every model verified and loaded (and its workers up) before the first request."""
    state = model_server_state_of(app)
    if state.token is None:
        log.warning(
            "model_server_unguarded", hint="set MODEL_SERVER_TOKEN; production refuses to start without it"
        )
    db = Database(create_engine(state.settings))
    fleet = ModelFleet(db, state.registry, poll_interval_s=state.settings.model_state_poll_seconds)
    try:
        await fleet.start()
        state.fleet = fleet
        log.info("model_server_started", models=state.registry.loaded())
        yield
    finally:
        state.fleet = None
        await fleet.close()
        await state.registry.close()
        await db.dispose()
        log.info("model_server_stopped")


def create_model_server(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    token = settings.model_server_token.get_secret_value() if settings.model_server_token else None
    app = FastAPI(
        title=f"{settings.app_name} model server",
        version="1.0.0",
        summary="The models of fastapi-ml-service behind the Open Inference Protocol.",
        lifespan=lifespan,
        middleware=[
            Middleware(
                RequestContextMiddleware,
                access_log=settings.access_log,
                metrics=settings.metrics_enabled,
                max_headers=settings.max_request_headers,
                max_header_bytes=settings.max_request_header_bytes,
            ),
            Middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_body_bytes),
        ],
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.model_server = ModelServerState(
        settings=settings,
        # Versions the state drops are unloaded a few polls later: web workers still routing to
        # one move on first (they converge within a poll).
        registry=ModelRegistry(
            registry_settings(settings, unload_grace_s=3 * settings.model_state_poll_seconds),
            on_batch=observe_model_batch,
        ),
        token=token,
    )
    install_exception_handlers(app)
    # The web tier's /v2 routes, with the service token in place of a user's access token and no
    # prediction log: one implementation of the protocol for both tiers.
    app.include_router(
        oip_router(
            reader=service_token,
            predictor=service_token,
            admin=service_token,
            inference=local_inference,
            repository=local_repository,
        )
    )
    app.include_router(health.model_server_router)
    if settings.metrics_enabled:
        app.add_route("/metrics", health.model_server_metrics, methods=["GET"], include_in_schema=False)
    # The web tier's slash redirects, relative: `Host: evil.com` never names where a client goes next.
    relative_slash_redirects(app)
    return app


app = create_model_server()
