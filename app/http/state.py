"""The app's one state, typed: what `create_app` makes (settings, tracing, the in-flight counter,
the shutdown flag) and what the lifespan opens once per process and closes at shutdown
(`Resources`). Read with `state_of(request)` (or `state_of(app)`), never with `getattr`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from starlette.requests import HTTPConnection

from app.core.config import Settings
from app.core.security import PasswordHasher, TokenCodec
from app.db.database import Database
from app.http.limiter import Limits
from app.ml.registry import ModelRegistry, RegistrySettings
from app.observability.metrics import InFlight, Sampler
from app.observability.tracing import Tracing

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from app.jobs.engine import JobQueue
    from app.services.api_keys import KeyRing
    from app.services.model_fleet import ModelFleet
    from app.services.prediction_log import PredictionLog
    from app.services.shadow import ShadowRunner


@dataclass(slots=True, eq=False)
class Resources:
    """Opened by the lifespan before the first request, closed after the last."""

    db: Database
    hasher: PasswordHasher
    codec: TokenCodec
    keys: KeyRing
    registry: ModelRegistry
    fleet: ModelFleet
    prediction_log: PredictionLog
    shadows: ShadowRunner
    limits: Limits
    sampler: Sampler
    migration_head: str | None
    jobs: JobQueue


@dataclass(slots=True, eq=False)
class State:
    settings: Settings
    tracing: Tracing | None
    in_flight: InFlight
    # From SIGTERM (or the end of the lifespan) on: /readyz answers 503 while requests drain.
    shutting_down: bool = False
    started: Resources | None = None

    @property
    def resources(self) -> Resources:
        if self.started is None:
            raise RuntimeError("the app's lifespan has not started (or has ended)")
        return self.started


def state_of(app_or_connection: Starlette | HTTPConnection) -> State:
    """The app's `State` (kept as the one attribute `service` of Starlette's attribute bag)."""
    app = app_or_connection.app if isinstance(app_or_connection, HTTPConnection) else app_or_connection
    return cast(State, app.state.service)


def registry_settings(settings: Settings, *, unload_grace_s: float = 0.0) -> RegistrySettings:
    """The model layer's tunables from the service's settings (web tier and model server alike)."""
    token = settings.model_server_token
    return RegistrySettings(
        model_dir=settings.ml_model_dir,
        onnx_threads=settings.ml_onnx_threads,
        process_workers=settings.ml_process_workers,
        start_method=settings.ml_start_method,
        process_worker_nice=settings.ml_process_worker_nice,
        batching_enabled=settings.ml_batching_enabled,
        close_timeout_s=float(settings.timeout_graceful_shutdown),
        remote_url=settings.ml_remote_url,
        remote_token=token.get_secret_value() if token else None,
        unload_grace_s=unload_grace_s,
    )


@dataclass(slots=True, eq=False)
class ModelServerState:
    """The model server's one state (app.model_server): its settings, its model registry and the
    fleet state it follows (read from the database: no users, no other table)."""

    settings: Settings
    registry: ModelRegistry
    token: str | None
    fleet: ModelFleet | None = None


def model_server_state_of(app_or_connection: Starlette | HTTPConnection) -> ModelServerState:
    """The model server's `ModelServerState` (the attribute `model_server` of the attribute bag)."""
    app = app_or_connection.app if isinstance(app_or_connection, HTTPConnection) else app_or_connection
    return cast(ModelServerState, app.state.model_server)
