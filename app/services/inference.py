"""Predictions for the API: the model registry's answers, its errors as domain errors, and the log.

Every model-layer failure is translated here, once, into the service's error types, so both the
/api/v1 routes and the Open Inference Protocol routes report it the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from app.core.errors import (
    AppError,
    BadGateway,
    Conflict,
    GatewayTimeout,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    ValidationFailed,
)
from app.core.ids import new_prediction_id
from app.ml import errors as ml
from app.ml.fleet import Alias, StateConflict, VersionNotFound
from app.ml.manifest import ModelSpec
from app.ml.predictions import PredictionResult, output_values
from app.ml.registry import ModelRegistry, Served
from app.observability import metrics
from app.services.prediction_log import PredictionEvent, PredictionLog, asked_of
from app.services.shadow import ShadowCopy, ShadowRunner


class ModelNotFound(NotFound):
    pass


class VersionConflict(Conflict):
    """The change would leave a route broken, or the state forbids it (app.ml.fleet)."""

    code = "model-state-conflict"


class ModelLoadFailed(Conflict):
    """A version could not be loaded: its file's hash, its format, its warm-up; names the file."""

    code = "model-load-failed"


class PredictionError(AppError):
    status, code, title = 500, "prediction-failed", "Prediction Failed"


class ModelServerUnavailable(ServiceUnavailable):
    """A remote model's server is down or its circuit open (counted apart from overload)."""

    code = "model-server-unavailable"


class CallerGone(AppError):
    """The caller went away before its prediction was computed; nobody reads this answer (the
    status is nginx's "client closed request", for the access log)."""

    status, code, title = 499, "client-closed-request", "Client Closed Request"


def translate(exc: ml.ModelError) -> AppError:  # noqa: PLR0912 - one case per domain error
    """The service error for a model-layer error: its HTTP status, code and client-facing detail."""
    match exc:
        case ml.ModelNotFound():
            return ModelNotFound(f"No model named {exc.name!r}. Available: {', '.join(exc.available)}.")
        case VersionNotFound():
            what = "version" if exc.ref == "*" else f"version or alias {exc.ref!r}"
            known = f" Known: {', '.join(exc.known)}." if exc.known else ""
            return ModelNotFound(f"Model {exc.model!r} has no {what} here.{known}")
        case StateConflict():
            return VersionConflict(exc.message)
        case ml.ModelLoadError():
            return ModelLoadFailed(f"{exc.file}: {exc.reason}")
        case ml.InvalidInput():
            return ValidationFailed(
                f"Invalid input for model {exc.model!r}; expected features in this order: "
                f"{', '.join(exc.expected)}.",
                errors=[{"field": field, "message": message} for field, message in exc.errors],
            )
        case ml.BatchTooLarge():
            return PayloadTooLarge(
                f"{exc.rows} rows sent; model {exc.model!r} takes at most {exc.max_rows} per request.",
                errors=[{"field": exc.field, "message": f"at most {exc.max_rows} rows"}],
            )
        case ml.ModelOverloaded():
            return ServiceUnavailable(
                f"Model {exc.model!r} is overloaded; retry shortly.",
                headers={"Retry-After": str(exc.retry_after)},
            )
        case ml.PredictionTimeout():
            return GatewayTimeout(f"Model {exc.model!r} did not answer within {exc.timeout_ms} ms.")
        case ml.ModelWorkerCrashed():
            return ServiceUnavailable(
                f"The worker running model {exc.model!r} stopped; it is being replaced. Retry.",
                headers={"Retry-After": "1"},
            )
        case ml.VersionUnavailable(reason=None):
            return ServiceUnavailable(
                f"Model {exc.model!r} version {exc.version!r} is still loading here; retry shortly.",
                headers={"Retry-After": "1"},
            )
        case ml.VersionUnavailable():
            return ServiceUnavailable(
                f"Model {exc.model!r} version {exc.version!r} cannot be served here ({exc.reason}); "
                f"it is tried again every {exc.retry_after} s.",
                headers={"Retry-After": str(exc.retry_after)},
            )
        case ml.ModelsNotReady():
            return ServiceUnavailable("Models are not ready yet.", headers={"Retry-After": "1"})
        case ml.BackendUnavailable():
            return ModelServerUnavailable(
                f"The server of model {exc.model!r} is unavailable ({exc.reason}). Retry.",
                headers={"Retry-After": str(exc.retry_after)},
            )
        case ml.BackendError():
            return BadGateway(f"The server of model {exc.model!r} gave no usable answer: {exc.reason}.")
        case _:
            return PredictionError("The model failed to compute a prediction.")


class InferenceService:
    """`caller_gone`, when given, returns once the caller has gone away (the API passes "the client
    disconnected"): a prediction still queued then is withdrawn instead of computed for nobody.
    `prediction_log` is None in the model server, which has no users: the web tier in front of it
    logs each prediction against its user."""

    def __init__(
        self,
        registry: ModelRegistry,
        prediction_log: PredictionLog | None,
        caller_gone: Callable[[], Awaitable[object]] | None = None,
        *,
        shadows: ShadowRunner | None = None,
    ) -> None:
        self.registry = registry
        self.log = prediction_log
        self.caller_gone = caller_gone
        self.shadows = shadows

    @property
    def ready(self) -> bool:
        """Every model loaded (and none being replaced)."""
        return self.registry.ready

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether this model (version) answers now (its worker pool up, its remote server ready)."""
        try:
            return self.registry.model_ready(name, version)
        except ml.ModelError as exc:
            raise translate(exc) from None

    def models(self) -> list[ModelSpec]:
        return self.registry.list()

    def model(self, name: str, version: str | None = None) -> ModelSpec:
        """A model's entry: that of `version` (a version or an alias), or of its default."""
        try:
            return self.registry.get(name, version)
        except ml.ModelError as exc:
            raise translate(exc) from None

    def versions(self, name: str) -> list[str]:
        """The versions of a model loaded in this process."""
        return self.registry.versions(name)

    def aliases(self, name: str) -> list[Alias]:
        return self.registry.aliases(name)

    def default_model(self) -> str:
        try:
            return self.registry.default_model
        except ml.ModelError as exc:
            raise translate(exc) from None

    def heavy_model(self) -> str:
        try:
            return self.registry.heavy_model or self.registry.default_model
        except ml.ModelError as exc:
            raise translate(exc) from None

    def route(self, user_id: int, name: str, version: str | None = None) -> Served:
        """The version one request of this caller goes to (`version`: a version or an alias of the
        model; None: its `default` alias, split by weight, sticky per caller where it says),
        resolved once: run the request on it with `run_rows` or `run_one`."""
        try:
            return self.registry.resolve(name, version, user_id)
        except ml.ModelError as exc:
            raise translate(exc) from None

    def shadow_of(self, name: str, version: str | None = None) -> Served | None:
        """Where a copy of this request goes (the alias's shadow, drawn at its percent), if any."""
        return self.registry.shadow(name, version) if self.shadows is not None else None

    async def predict_rows(
        self, user_id: int, name: str, rows: Any, field: str = "rows", version: str | None = None
    ) -> PredictionResult:
        """`run_rows` on the version `route` picks. The result names the version that served it
        (an alias may split between versions)."""
        served = self.route(user_id, name, version)
        return await self.run_rows(user_id, served, rows, field=field, shadow=self.shadow_of(name, version))

    async def predict_one(
        self, user_id: int, name: str, features: Any, version: str | None = None
    ) -> PredictionResult:
        """`run_one` on the version `route` picks."""
        served = self.route(user_id, name, version)
        return await self.run_one(user_id, served, features, shadow=self.shadow_of(name, version))

    async def run_rows(
        self, user_id: int, served: Served, rows: Any, field: str = "rows", *, shadow: Served | None = None
    ) -> PredictionResult:
        """A batch of rows on the version `route` returned for this request (routed once: a caller
        that needs the version before it reads the rows, as /v2 infer, routes and then runs); a
        copy to `shadow` (`shadow_of`) once it has answered."""
        return await self._run(
            user_id,
            served.spec,
            rows,
            lambda: self.registry.run(served, rows, field=field),
            batch=True,
            shadow=shadow,
        )

    async def run_one(
        self, user_id: int, served: Served, features: Any, *, shadow: Served | None = None
    ) -> PredictionResult:
        """One row on the version `route` returned for this request."""
        return await self._run(
            user_id,
            served.spec,
            features,
            lambda: self.registry.run_one(served, features),
            batch=False,
            shadow=shadow,
        )

    async def _run(
        self,
        user_id: int,
        spec: ModelSpec,
        inputs: Any,
        call: Callable[[], Awaitable[PredictionResult]],
        *,
        batch: bool,
        shadow: Served | None = None,
    ) -> PredictionResult:
        name = spec.name
        try:
            result = await self._unless_caller_gone(spec, call())
        except ml.ModelError as exc:
            error = translate(exc)
            # Bad input and unknown models are the client's mistake, not a prediction: not logged.
            if not isinstance(
                exc,
                ml.InvalidInput | ml.BatchTooLarge | ml.ModelNotFound | ml.ModelsNotReady | VersionNotFound,
            ):
                metrics.observe_model_rejected(name, spec.version, error.code)
                rows = len(inputs) if batch and isinstance(inputs, list) else 1
                if self.log is not None:
                    self.log.record(PredictionEvent(user_id, spec.name, spec.version, rows, 0.0, error.code))
            raise error from None
        if self.log is None:
            return result
        prediction_id = new_prediction_id()
        self.log.record(
            PredictionEvent(
                user_id=user_id,
                model=result.model,
                version=result.version,
                rows=len(result.predictions),
                latency_ms=round(result.elapsed_ms, 3),
                outcome="ok",
                inputs=(inputs if batch else [inputs]) if spec.log_inputs else None,
                prediction_id=prediction_id,
                outputs=output_values(result),
                asked=asked_of(spec, result),
            )
        )
        if shadow is not None and self.shadows is not None:
            # After the answer is made: the shadow's queue takes a copy or drops it, never waits.
            self.shadows.offer(ShadowCopy(shadow, inputs, not batch, result, prediction_id, user_id))
        return dataclasses.replace(result, prediction_id=prediction_id)

    async def _unless_caller_gone(
        self, spec: ModelSpec, work: Awaitable[PredictionResult]
    ) -> PredictionResult:
        """`work`, unless the caller goes away first: then this request's task is cancelled where
        it waits (the model layer takes a cancelled request out of its queue, app.ml.batching) and
        `CallerGone` raised. One watcher task per prediction, nothing else: the prediction runs in
        the request's own task (a second task and `asyncio.wait` cost ~60 µs more per request)."""
        request = asyncio.current_task()
        if self.caller_gone is None or request is None:
            return await work
        watcher = asyncio.get_running_loop().create_task(_cancel_when(self.caller_gone, request))
        try:
            return await work
        except asyncio.CancelledError:
            # Ours (the caller left), and nobody else's (a server shutting down): a CallerGone.
            if watcher.done() and not watcher.cancelled() and request.uncancel() == 0:
                metrics.observe_model_rejected(spec.name, spec.version, CallerGone.code)
                raise CallerGone from None
            raise
        finally:
            watcher.cancel()


async def _cancel_when(gone: Callable[[], Awaitable[object]], request: asyncio.Task[Any]) -> None:
    await gone()
    request.cancel()
