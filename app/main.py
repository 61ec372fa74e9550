"""The one place that builds the app: settings, lifespan resources, middleware, routers, docs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi_offline
import structlog
from fastapi import FastAPI
from fastapi.middleware import Middleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from app.api import deps, health, openapi
from app.api.oip import oip_router
from app.api.v1.router import routers as v1_routers
from app.api.v2.router import routers as v2_routers
from app.core.config import Settings, get_settings
from app.core.logging import configure_logging
from app.core.security import ApiKeyCodec, InvalidAccessToken, InvalidApiKey, PasswordHasher, TokenCodec
from app.db.database import Database
from app.db.engine import create_engine
from app.db.migrations import head_revision, upgrade_to_head
from app.http.lifecycle import running
from app.http.limiter import Limits
from app.http.middleware import (
    DOCS_PATHS,
    BodySizeLimitMiddleware,
    ProblemCORSMiddleware,
    RequestContextMiddleware,
    SecurityHeaders,
    TrustedHostMiddleware,
    script_hashes,
)
from app.http.problems import install_exception_handlers
from app.http.ratelimit import refused_token_handler
from app.http.redirects import relative_slash_redirects
from app.http.shedding import LoadSheddingMiddleware
from app.http.state import Resources, State, registry_settings, state_of
from app.jobs.engine import JobEngine, JobQueue
from app.jobs.runner import JobRunner, LoopHandler
from app.ml.registry import ModelRegistry
from app.observability import tracing
from app.observability.metrics import InFlight, Sampler, observe_model_batch
from app.services.api_keys import KeyRing
from app.services.model_fleet import ModelFleet
from app.services.prediction_log import PredictionLog
from app.services.shadow import ShadowRunner

log = structlog.get_logger("app")

# Swagger UI and ReDoc assets shipped inside a PyPI package: the docs work with no internet.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"


def _signing_key(settings: Settings) -> str:
    key, generated_at = settings.signing_key()
    if generated_at:
        log.warning(
            "development_secret_key",
            path=generated_at,
            hint="set SECRET_KEY; production refuses to start without it",
        )
    return key


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Opens what the app holds (`Resources`) before the first request, and closes it, in reverse
    order of need, after the last: in-flight predictions finish, their records are written, then
    the database goes away."""
    state = state_of(app)
    settings = state.settings
    key = _signing_key(settings)
    db = Database(create_engine(settings))
    hasher = PasswordHasher(settings)
    registry = ModelRegistry(registry_settings(settings), on_batch=observe_model_batch)
    fleet = ModelFleet(db, registry, poll_interval_s=settings.model_state_poll_seconds)
    prediction_log = PredictionLog(
        db,
        queue_size=settings.prediction_log_queue_size,
        batch_size=settings.prediction_log_batch_size,
        flush_interval_s=settings.prediction_log_flush_ms / 1000,
    )
    shadows = ShadowRunner(
        registry, prediction_log, queue_size=settings.shadow_queue_size, workers=settings.shadow_workers
    )
    limits = Limits(settings)
    keys = KeyRing(db, ApiKeyCodec(key), flush_interval_s=settings.api_key_usage_flush_seconds)
    sampler = Sampler(state.in_flight, db.engine.pool, settings.db_pool_size)
    sampler.queue_depth_sources.append(lambda: _queue_depths(registry))
    jobs: JobQueue | None = None
    runner: JobRunner | None = None
    try:
        # The job engine's storage (a SQLite queue file, or tables in PostgreSQL) is opened here,
        # in a thread: Huey's drivers block.
        jobs = JobQueue(await asyncio.to_thread(JobEngine, settings))
        if settings.migrate_on_startup:
            await upgrade_to_head(db.engine)
        if settings.ml_enabled:
            # Every model version of the fleet's desired state verified (sha256) and loaded before
            # the first request is accepted (a missing or corrupt file ends the start-up here with
            # one line naming it); then the state is polled and followed without restarts.
            await fleet.start()
        prediction_log.start()
        keys.start()
        runner = _run_jobs_here(settings, db, registry, jobs) if settings.jobs_embedded else None
        state.started = Resources(
            db=db,
            hasher=hasher,
            codec=TokenCodec(settings, key),
            keys=keys,
            registry=registry,
            fleet=fleet,
            prediction_log=prediction_log,
            shadows=shadows,
            limits=limits,
            sampler=sampler,
            migration_head=head_revision(),
            jobs=jobs,
        )
        state.shutting_down = False
        log.info("started", environment=settings.environment, database=db.engine.url.get_backend_name())
        async with running(state):  # sampler, tracing, the SIGTERM flag, the tuned GC
            yield
    finally:
        state.shutting_down = True
        if runner is not None:
            runner.stop()  # a running job hands its chunk back and goes back to the queue
        if jobs is not None:
            await jobs.close(timeout_s=float(settings.timeout_graceful_shutdown))
        await fleet.close()
        await shadows.close()
        await registry.close()
        await prediction_log.close()
        await keys.close()
        sampler.close()
        await limits.close()
        if state.tracing is not None:
            state.tracing.shutdown()
        hasher.close()
        await db.dispose()
        state.started = None
        log.info("stopped")


def _run_jobs_here(settings: Settings, db: Database, registry: ModelRegistry, jobs: JobQueue) -> JobRunner:
    """The embedded worker (docs/jobs.md): a Huey consumer in threads, running each job on this
    process's event loop and models; no worker process to start."""
    runner = JobRunner(db, registry, settings, enqueue=jobs.enqueue, queue_depth=jobs.pending)
    jobs.start_consumer(LoopHandler(runner, asyncio.get_running_loop()), settings.jobs_worker_threads)
    runner.start_upkeep()
    return runner


def _queue_depths(registry: ModelRegistry) -> dict[tuple[str, str], int]:
    return {key: m.queue_depth for key, m in registry.metrics().items()}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    docs = settings.show_docs
    tracer = tracing.setup(settings)
    state = State(settings=settings, tracing=tracer, in_flight=InFlight())
    pages = _docs_pages(settings.app_name) if docs else None
    security = SecurityHeaders(
        hsts_max_age=settings.hsts_max_age,
        docs_paths=DOCS_PATHS if docs else frozenset(),
        docs_script_hashes=script_hashes(pages or ()),
    )
    # Every middleware, outermost first: shedding answers before anything at all is spent; the
    # request context adds ids, security headers, metrics, the access line, the header limits and
    # the last-resort 500 to everything inside it; trusted hosts refuse foreign Host headers; CORS
    # answers preflights; the body limit counts what the routes read.
    middleware = [
        Middleware(
            LoadSheddingMiddleware,
            max_in_flight=settings.max_requests_in_flight,
            in_flight=state.in_flight,
            headers=security.api,
        ),
        Middleware(
            RequestContextMiddleware,
            access_log=settings.access_log,
            metrics=settings.metrics_enabled,
            security_headers=security,
            max_headers=settings.max_request_headers,
            max_header_bytes=settings.max_request_header_bytes,
            refuse_preflights=not settings.cors_origins,
        ),
    ]
    if "*" not in settings.trusted_hosts:
        middleware.append(Middleware(TrustedHostMiddleware, allowed=settings.trusted_hosts))
    if settings.cors_origins:
        middleware.append(
            Middleware(
                ProblemCORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
                allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                expose_headers=["X-Request-ID", "X-Total-Count", "Retry-After"],
                max_age=600,
            )
        )
    middleware.append(
        Middleware(
            BodySizeLimitMiddleware,
            max_bytes=settings.max_request_body_bytes,
            # A job's upload streams into the database (its route counts it exactly: 413 past it).
            larger={"/api/v1/jobs": max(settings.jobs_max_upload_bytes, settings.max_request_body_bytes) + 1},
        )
    )
    app = FastAPI(
        telemetry=tracing.fastapi_config(tracer),
        title=settings.app_name,
        version="1.0.0",
        summary="Serves machine-learning models to authenticated users.",
        lifespan=lifespan,
        middleware=middleware,
        openapi_url="/openapi.json" if docs else None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = state
    install_exception_handlers(app)
    # Credentials the database refuses give back what they were counted against (ratelimit).
    app.add_exception_handler(InvalidAccessToken, refused_token_handler)
    app.add_exception_handler(InvalidApiKey, refused_token_handler)
    oip = oip_router(
        reader=deps.model_reader_id,
        predictor=deps.predictor_id,
        admin=deps.admin_id,
        inference=deps.get_inference,
        repository=deps.get_model_repository,
    )
    for router in (*v1_routers, *v2_routers, oip, health.router):
        app.include_router(router)
    if settings.metrics_enabled:
        app.add_route("/metrics", health.metrics, methods=["GET"], include_in_schema=False)
    openapi.install(app, settings)
    if pages:
        _mount_docs(app, *pages)
    relative_slash_redirects(app)
    return app


def _docs_pages(title: str) -> tuple[str, str]:
    """Swagger UI and ReDoc pages, rendered once: their inline script is hashed into the CSP."""
    swagger = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{title} - Swagger UI",
        swagger_js_url="/static/docs/swagger-ui-bundle.js",
        swagger_css_url="/static/docs/swagger-ui.css",
        swagger_favicon_url="/static/docs/favicon.png",
        swagger_ui_parameters={"persistAuthorization": True},
    )
    redoc = get_redoc_html(
        openapi_url="/openapi.json",
        title=f"{title} - ReDoc",
        redoc_js_url="/static/docs/redoc.standalone.js",
        redoc_favicon_url="/static/docs/favicon.png",
        with_google_fonts=False,
    )
    return bytes(swagger.body).decode(), bytes(redoc.body).decode()


# The ReDoc bundle shows a "Redocly" logo fetched from a CDN; the copy served here points it at the
# service's own favicon, so the docs page makes no request beyond the service.
REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


def _mount_docs(app: FastAPI, swagger: str, redoc: str) -> None:
    redoc_js = (
        (DOCS_ASSETS / "redoc.standalone.js")
        .read_bytes()
        .replace(REDOC_CDN_LOGO, b"/static/docs/favicon.png")
    )

    # Declared before the mount below, so it answers for this one file.
    @app.get("/static/docs/redoc.standalone.js", include_in_schema=False)
    async def redoc_bundle() -> Response:
        return Response(
            redoc_js, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"}
        )

    app.mount("/static/docs", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(swagger)

    @app.get("/redoc", include_in_schema=False)
    async def redoc_ui() -> HTMLResponse:
        return HTMLResponse(redoc)


app = create_app()
