"""The one place that builds the app: settings, lifespan resources, middleware, routers, docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi_offline
import structlog
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from app.api import health
from app.api.v1.router import router as v1_router
from app.api.v2.router import router as v2_router
from app.core.config import Settings, get_settings
from app.core.db import create_engine, create_session_factory
from app.core.exceptions import install_exception_handlers
from app.core.logging import configure_logging
from app.core.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from app.core.migrations import head_revision, upgrade_to_head
from app.core.resources import Resources
from app.core.security import PasswordHasher, TokenCodec

log = structlog.get_logger("app")

# Swagger UI and ReDoc assets shipped inside a PyPI package: the docs work with no internet.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    key, generated_at = settings.signing_key()
    if generated_at:
        log.warning(
            "development_secret_key",
            path=generated_at,
            hint="set SECRET_KEY; production refuses to start without it",
        )
    engine = create_engine(settings)
    hasher = PasswordHasher(settings)
    try:
        if settings.migrate_on_startup:
            await upgrade_to_head(engine)
        resources = Resources(
            settings=settings,
            engine=engine,
            session_factory=create_session_factory(engine),
            hasher=hasher,
            codec=TokenCodec(settings, key),
            migration_head=head_revision(),
        )
        app.state.resources = resources
        app.state.shutting_down = False
        log.info("started", environment=settings.environment, database=engine.url.get_backend_name())
        yield
        app.state.shutting_down = True
    finally:
        hasher.close()
        await engine.dispose()
        log.info("stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    docs = settings.show_docs
    app = FastAPI(
        title=settings.app_name,
        version="1.0.0",
        summary="Serves machine-learning models to authenticated users.",
        lifespan=lifespan,
        openapi_url="/openapi.json" if docs else None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    install_exception_handlers(app)
    # Added last = outermost: the request id and the last-resort 500 wrap everything else.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_body_bytes)
    app.add_middleware(RequestContextMiddleware, access_log=settings.access_log)
    app.include_router(health.router)
    app.include_router(v1_router)
    app.include_router(v2_router)
    if docs:
        _mount_docs(app)
    return app


def _mount_docs(app: FastAPI) -> None:
    app.mount("/static/docs", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    title = app.title

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{title} - Swagger UI",
            swagger_js_url="/static/docs/swagger-ui-bundle.js",
            swagger_css_url="/static/docs/swagger-ui.css",
            swagger_favicon_url="/static/docs/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{title} - ReDoc",
            redoc_js_url="/static/docs/redoc.standalone.js",
            redoc_favicon_url="/static/docs/favicon.png",
            with_google_fonts=False,
        )


app = create_app()
