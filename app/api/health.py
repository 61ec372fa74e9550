"""Liveness and readiness probes, and the metrics scrape (unversioned: they belong to the
deployment, not the API)."""

from __future__ import annotations

import structlog
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from sqlalchemy import text

from app.core.errors import ServiceUnavailable
from app.http.problems import is_database_outage
from app.http.state import model_server_state_of, state_of
from app.ml.manifest import ModelSpec
from app.observability.metrics import exposition
from app.schemas.common import problem_responses
from app.services.quality import QualityService

log = structlog.get_logger("app.api.health")

router = APIRouter(tags=["health"])


class HealthStatus(BaseModel):
    status: str


class ReadinessStatus(BaseModel):
    status: str
    database: str
    migrations: str
    models: str
    model_versions: dict[str, list[str]] = Field(
        description="The versions each model has loaded in this process."
    )
    model_state_revision: int | None = Field(
        description="The revision of the fleet's desired model state this process has converged on."
    )


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
    models = (
        _models_status(resources.registry.list(), resources.registry.not_ready())
        if models_enabled
        else "disabled"
    )
    registry = resources.registry
    return ReadinessStatus(
        status="ready",
        database="ok",
        migrations=str(version),
        models=models,
        model_versions=registry.loaded() if models_enabled else {},
        model_state_revision=registry.revision,
    )


def _models_status(models: list[ModelSpec], not_ready: list[str]) -> str:
    """`3 loaded`, or `3 loaded; not answering: breast_cancer` when a remote model's server is
    down or a worker pool restarts. Still ready: the other models and every other route serve,
    and each model's own readiness is `/v2/models/{name}/ready`."""
    status = f"{len(models)} loaded"
    return f"{status}; not answering: {', '.join(not_ready)}" if not_ready else status


async def metrics(request: Request) -> Response:
    """GET /metrics (`METRICS_ENABLED`). Keep it off the public ingress: it names routes and load,
    not users."""
    resources = state_of(request).resources
    resources.sampler.sample()
    if resources.registry.ready:
        try:
            await QualityService(resources.db).sample(resources.registry)
        except Exception:  # the rest of the metrics still answer while the database is away
            log.warning("quality_sample_failed", exc_info=True)
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)


# --- the model server's probes (app.model_server): models only, no database ---

model_server_router = APIRouter(tags=["health"])


class ModelServerReadiness(BaseModel):
    status: str
    models: str
    model_versions: dict[str, list[str]]
    model_state_revision: int | None


@model_server_router.get("/healthz", summary="Liveness: the process is serving")
async def model_server_healthz() -> HealthStatus:
    return HealthStatus(status="ok")


@model_server_router.get(
    "/readyz", summary="Readiness: every model answers", responses=problem_responses(503)
)
async def model_server_readyz(request: Request) -> ModelServerReadiness:
    """503 until every model is loaded and its worker pool up (and while one is replaced), so a
    load balancer sends predictions only to a model server that can answer them all."""
    registry = model_server_state_of(request).registry
    not_ready = registry.not_ready()
    if not registry.ready or not_ready:
        raise ServiceUnavailable(
            f"Models not ready: {', '.join(not_ready) or 'starting'}.", headers={"Retry-After": "1"}
        )
    return ModelServerReadiness(
        status="ready",
        models=_models_status(registry.list(), []),
        model_versions=registry.loaded(),
        model_state_revision=registry.revision,
    )


async def model_server_metrics(_request: Request) -> Response:
    """GET /metrics of the model server: the model counters, queues and batches."""
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
