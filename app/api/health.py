"""Liveness and readiness probes, and the metrics scrape (unversioned: they belong to the
deployment, not the API)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from sqlalchemy import text

from app.core.errors import ServiceUnavailable
from app.http.problems import is_database_outage
from app.http.state import state_of
from app.observability.metrics import exposition
from app.schemas.common import problem_responses

router = APIRouter(tags=["health"])


class HealthStatus(BaseModel):
    status: str


class ReadinessStatus(BaseModel):
    status: str
    database: str
    migrations: str
    models: str


@router.get("/healthz", summary="Liveness: the process is serving")
async def healthz() -> HealthStatus:
    """Touches nothing: a failing database must not get the process restarted."""
    return HealthStatus(status="ok")


@router.get("/readyz", summary="Readiness: able to serve traffic", responses=problem_responses(503))
async def readyz(request: Request) -> ReadinessStatus:
    """Database reachable and migrated to the head revision, every model loaded. 503 until then."""
    state = state_of(request)
    if state.shutting_down:
        raise ServiceUnavailable("Shutting down.", headers={"Retry-After": "1"})
    resources = state.resources
    models_enabled = state.settings.ml_enabled
    if models_enabled and not resources.registry.ready:
        raise ServiceUnavailable("The models are not loaded.", headers={"Retry-After": "1"})
    try:
        async with resources.db.engine.connect() as conn:
            version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
    except Exception as exc:
        if is_database_outage(exc):
            raise ServiceUnavailable("The database is unreachable.", headers={"Retry-After": "1"}) from exc
        # Reachable, but no alembic_version table: not migrated yet.
        raise ServiceUnavailable("The database has not been migrated.", headers={"Retry-After": "5"}) from exc
    if version != resources.migration_head:
        raise ServiceUnavailable(
            f"The database is at revision {version}, the code expects {resources.migration_head}; "
            "run the migrations.",
            headers={"Retry-After": "5"},
        )
    models = f"{len(resources.registry.list())} loaded" if models_enabled else "disabled"
    return ReadinessStatus(status="ready", database="ok", migrations=str(version), models=models)


async def metrics(request: Request) -> Response:
    """GET /metrics (`METRICS_ENABLED`). Keep it off the public ingress: it names routes and load,
    not users."""
    state_of(request).resources.sampler.sample()
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
