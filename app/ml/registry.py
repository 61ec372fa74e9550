"""The model registry: the model versions this process serves, and the routes to them.

One instance per process (web worker or model server), opened in the lifespan
(`await registry.start(state)`) and closed at shutdown (`await registry.close()`). What it loads
and where each alias points follow a `FleetState` (app.ml.fleet): `start` loads the state it is
given, `converge` moves to a new one without a restart (loading first, then moving routes, then
unloading what nothing routes to any more, after its in-flight requests finish). Routes call
`registry.predict(...)` (or `resolve` once, then `run` on what it returned) and map the domain
errors of `app.ml.errors` to HTTP; nothing here knows about HTTP or the database.

This class is the facade the service calls; the work is in three parts, each readable alone:
loading versions (app.ml.loading), routing requests to them (app.ml.routing) and converging on
the desired state (app.ml.converging).
"""

from __future__ import annotations

import builtins
import time

import numpy as np

from app.ml.batching import BatchObserver
from app.ml.converging import Converger
from app.ml.errors import ModelsNotReady
from app.ml.fleet import Alias, FleetState, Key
from app.ml.inputs import validate_features, validate_rows
from app.ml.loading import Loader
from app.ml.manifest import Manifest, ModelSpec
from app.ml.predictions import PredictionResult, to_predictions
from app.ml.routing import ModelMetrics, Served, VersionStatus
from app.ml.settings import RegistrySettings

__all__ = ["ModelMetrics", "ModelRegistry", "RegistrySettings", "Served", "VersionStatus"]


class ModelRegistry:
    """The loaded model versions, each behind its own micro-batcher, and each model's aliases."""

    def __init__(
        self, settings: RegistrySettings | None = None, *, on_batch: BatchObserver | None = None
    ) -> None:
        self.settings = settings or RegistrySettings()
        self._lifecycle = Converger(self.settings, Loader(self.settings, on_batch))
        self._router = self._lifecycle.router

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True between a successful start() and close(): every version of the state tried, those
        that could be taken loaded (process-pool models may still be starting when
        `wait_for_workers` is off); see `index()` for those that could not."""
        return self._lifecycle.ready

    @property
    def workers_ready(self) -> bool:
        """True when, in addition, every process-pool model has live workers with the model loaded
        (False while a pool starts or is being replaced after a crash)."""
        return self.ready and all(
            s.runtime.is_ready for s in self._router.served.values() if s.spec.executor == "process"
        )

    @property
    def revision(self) -> int | None:
        """The revision of the last state whose routes this process applied (None before start)."""
        return self._lifecycle.revision

    @property
    def settled(self) -> bool:
        """Every version of the desired state loaded here and nothing else left to unload."""
        return self._router.settled

    @property
    def pending(self) -> bool:
        """Something of the desired state is still to do here (a load to retry, an unload waiting
        for its grace period): converge() again even if the state has not changed."""
        return self._lifecycle.pending

    async def start(self, state: FleetState | None = None) -> None:
        """Read the manifest, then load what `state` says (None: the manifest's `seed`), each file's
        sha256 verified, each model loaded, the worker pools started.

        A version this process cannot take (not in its manifest, its entry refused, its file
        missing, corrupt or not loadable) is logged, reported UNAVAILABLE by `index()` with the
        reason and tried again after `load_retry_s` by `converge`, as a running process does: the
        rest is served. Only a manifest that cannot be read at all raises ModelLoadError (one line
        naming it), after undoing what was started.
        """
        await self._lifecycle.start(state)

    async def converge(self, state: FleetState) -> None:
        """Move to `state`: load the versions it adds (a failure is recorded, retried after
        `load_retry_s`, and leaves the routes as they were), then route each alias to its
        versions once they are all loaded here, then unload the versions nothing routes to any
        more, each after its in-flight requests have finished."""
        await self._lifecycle.converge(state)

    async def load_now(self, name: str, version: str | None, *, hold_s: float = float("inf")) -> ModelSpec:
        """Load one version here, now (its hash verified, a warm-up row run), ahead of the
        desired state that will name it: an admin's load verifies this way before the state
        changes. No version: the last one the manifest lists. The version is not unloaded by
        converge() for `hold_s` seconds (until `release()`).

        Raises ModelNotFound or VersionNotFound (not in the manifest), ModelLoadError."""
        return await self._lifecycle.load_now(name, version, hold_s=hold_s)

    def release(self, name: str, version: str) -> None:
        """End a `load_now` hold: converge() may unload the version if the state does not name it."""
        self._lifecycle.release(name, version)

    async def unload_now(self, name: str, version: str) -> None:
        """Unload one version here, now (the model server's repository extension)."""
        await self._lifecycle.unload_now(name, version)

    async def close(self) -> None:
        """Refuse new predictions, let in-flight ones finish (up to close_timeout_s), stop the pools.

        Every worker process is joined before this returns.
        """
        await self._lifecycle.close()

    # --- lookups ----------------------------------------------------------------------------------

    @property
    def default_model(self) -> str:
        """Name of the model `/api/v1/predict` serves."""
        return self._router.require_manifest().default_model

    @property
    def heavy_model(self) -> str | None:
        """Name of the model `/api/v1/predict-heavy` serves, if the manifest names one."""
        return self._router.require_manifest().heavy_model

    @property
    def manifest(self) -> Manifest:
        """The manifest as last read (at start, and again by each load)."""
        return self._router.require_manifest()

    def get(self, name: str, version: str | None = None) -> ModelSpec:
        """A served model's manifest entry: that of `version` (a version or an alias), or of the
        version its `default` alias mostly routes to; ModelNotFound or VersionNotFound."""
        return self._router.get(name, version)

    def versions(self, name: str) -> builtins.list[str]:
        """The versions of a model loaded here."""
        return self._router.versions(name)

    def aliases(self, name: str) -> builtins.list[Alias]:
        """The aliases requests to this model follow here."""
        return self._router.aliases(name)

    def loaded(self) -> dict[str, builtins.list[str]]:
        """Every model's versions loaded here."""
        return {name: self._router.versions(name) for name in self._router.names()}

    def index(self) -> builtins.list[VersionStatus]:
        """Every version of the manifest, and every one the desired state names, with its state
        here: READY, LOADING or UNAVAILABLE (with the reason)."""
        return self._router.index()

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether this model answers now: loaded, its worker pool up, or its server ready."""
        if not self.ready:
            raise ModelsNotReady()
        return self._router.runtime(name, version).is_ready

    def not_ready(self) -> builtins.list[str]:
        """The served models that would not answer now (a remote server down, a pool restarting)."""
        if not self.ready:
            return [spec.name for spec in self.list()]
        return [name for name in self._router.names() if not self.model_ready(name)]

    def metrics(self) -> dict[Key, ModelMetrics]:
        """Gauges and counters per model version, read at scrape time by a metrics collector."""
        return self._router.metrics()

    def worker_pids(self, name: str, version: str | None = None) -> builtins.list[int]:
        """Process ids of a process-pool model's workers (empty for thread-run models)."""
        return self._router.runtime(name, version).worker_pids()

    def list(self) -> builtins.list[ModelSpec]:
        """Each served model's entry (that of the version its `default` alias mostly routes to),
        in manifest order."""
        return [self.get(name) for name in self._router.names()]

    # --- predicting -------------------------------------------------------------------------------

    def resolve(self, name: str, version: str | None = None, caller: int | None = None) -> Served:
        """The version one request goes to, resolved once: `version` if it names a loaded version,
        else the alias it names (None: `default`), split by weight (sticky per `caller` where the
        alias says). Predict on it with `run` or `run_one`, in the same step of the event loop."""
        if not self.ready:
            raise ModelsNotReady()
        return self._router.resolve(name, version, caller)

    def shadow(self, name: str, version: str | None = None) -> Served | None:
        """Where a copy of one request to `version` (a version or an alias; None: `default`) goes:
        the alias's shadow, drawn at its percent, if loaded here (app.services.shadow)."""
        if not self.ready:
            return None
        return self._router.shadow(name, version)

    def route(self, name: str, version: str | None = None, caller: int | None = None) -> ModelSpec:
        """The entry of the version `resolve` picks."""
        return self.resolve(name, version, caller).spec

    async def predict(
        self,
        name: str,
        rows: object,
        *,
        field: str = "rows",
        version: str | None = None,
        caller: int | None = None,
    ) -> PredictionResult:
        """Predict a batch of rows (arrays in feature order or objects keyed by feature name).

        Raises ModelNotFound, VersionNotFound, InvalidInput, BatchTooLarge (validation, before any
        queueing), ModelOverloaded (queue full, at once), PredictionTimeout, ModelWorkerCrashed,
        PredictionFailed or ModelsNotReady. `field` prefixes the field paths of input errors.
        """
        return await self.run(self.resolve(name, version, caller), rows, field=field)

    async def predict_one(
        self,
        name: str,
        features: object,
        *,
        field: str = "features",
        version: str | None = None,
        caller: int | None = None,
    ) -> PredictionResult:
        """Predict one row; same errors as predict(), field paths like `features.2`."""
        return await self.run_one(self.resolve(name, version, caller), features, field=field)

    async def run(self, served: Served, rows: object, *, field: str = "rows") -> PredictionResult:
        """predict() on the version `resolve` returned."""
        return await self._predict(served, validate_rows(served.spec, rows, field=field))

    async def run_one(self, served: Served, features: object, *, field: str = "features") -> PredictionResult:
        """predict_one() on the version `resolve` returned."""
        return await self._predict(served, validate_features(served.spec, features, field=field))

    async def _predict(self, served: Served, x: np.ndarray) -> PredictionResult:
        started = time.perf_counter()
        outputs = await served.batcher.submit(x)
        spec = served.spec
        return PredictionResult(
            spec.name,
            spec.version,
            spec.task,
            to_predictions(spec, outputs),
            (time.perf_counter() - started) * 1000,
            inputs=x,
            outputs=outputs,
        )
