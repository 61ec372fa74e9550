"""The model server: the inference tier alone (`python -m app.cli model-server`).

The models of the manifest (ONNX Runtime in threads, the process pool, micro-batching: the same
`ModelRegistry` the web tier uses in process) behind the Open Inference Protocol at `/v2` (the
same routes as the web tier's, app.api.oip), with `/healthz`, `/readyz` and `/metrics`; nothing of
users or items. A shared service token (`MODEL_SERVER_TOKEN`) replaces the users' access tokens,
and the web tier, which logs every prediction against its user, points its manifest's models at
this server with `"executor": "remote"` (docs/models.md, docs/deployment.md).

Which versions it loads follows the fleet's desired state in the database (DATABASE_URL; read
only, app.services.model_fleet), as every web worker does; its repository extension
(`/v2/repository/...`) loads and unloads here alone, which is how a web tier has a version loaded
here before the state names it. Without a readable state it serves the manifest's seed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from fastapi.middleware import Middleware

from app.api import health, oip
from app.api.deps import (
    check_service_token,
    get_inference,
    get_model_repository,
    get_model_server_inference,
    get_model_server_repository,
    get_oip_admin,
    get_oip_predictor,
    get_oip_reader,
)
from app.core.config import Settings, get_settings
from app.core.logging import configure_logging
from app.db.database import Database
from app.db.engine import create_engine
from app.http.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from app.http.problems import install_exception_handlers
from app.http.redirects import relative_slash_redirects
from app.http.state import ModelServerState, model_server_state_of, registry_settings
from app.ml.registry import ModelRegistry
from app.observability.metrics import observe_model_batch
from app.services.model_fleet import ModelFleet

log = structlog.get_logger("app.model_server")


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
    app.dependency_overrides[get_oip_reader] = check_service_token
    app.dependency_overrides[get_oip_predictor] = check_service_token
    app.dependency_overrides[get_oip_admin] = check_service_token
    app.dependency_overrides[get_inference] = get_model_server_inference
    app.dependency_overrides[get_model_repository] = get_model_server_repository
    app.include_router(oip.router)
    app.include_router(health.model_server_router)
    if settings.metrics_enabled:
        app.add_route("/metrics", health.model_server_metrics, methods=["GET"], include_in_schema=False)
    # The web tier's slash redirects, relative: `Host: evil.com` never names where a client goes next.
    relative_slash_redirects(app)
    return app


app = create_model_server()
