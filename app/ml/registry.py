"""The model registry: loads every model of the manifest at start-up and serves predictions.

One instance per web process, opened in the lifespan (`await registry.start()`) and closed at
shutdown (`await registry.close()`). Routes call `registry.predict(...)` and map the domain errors
of `app.ml.errors` to HTTP; nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.ml.batching import BatcherStats, BatchingConfig, BatchObserver, MicroBatcher
from app.ml.errors import ModelNotFound, ModelsNotReady
from app.ml.inputs import validate_features, validate_rows
from app.ml.manifest import (
    Manifest,
    ModelSpec,
    display_path,
    load_manifest,
    model_path,
    read_verified,
    served_remotely,
)
from app.ml.predictions import PredictionResult, to_predictions
from app.ml.remote import Backend, BackendKey, RemoteRuntime
from app.ml.runtimes import OnnxRuntime, ProcessPoolRuntime, Runtime, StartMethod

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """Tunables of the model layer; the service's Settings maps its ML_* variables onto these."""

    model_dir: Path = Path("ml_models")
    # Threads running ONNX models (shared by all of them); each is one batch at a time.
    onnx_threads: int = 2
    # ONNX Runtime's own threads per run; 1 because batches already run side by side.
    onnx_intra_op_threads: int = 1
    # Worker processes per skops model; each holds a copy of the model.
    process_workers: int = 2
    # forkserver: workers fork from a server that imported scikit-learn once, so a replacement
    # worker starts in milliseconds; spawn starts a fresh interpreter (seconds) per worker.
    start_method: StartMethod = "forkserver"
    # Added to the worker processes' nice value (0: as the web process). Model work then yields the
    # CPU to the web worker's event loop when both want the same core (docs/models.md).
    process_worker_nice: int = 19
    batching_enabled: bool = True
    # A batch may run timeout_ms * this long before its thread run is terminated or its worker
    # processes killed (the request itself gets PredictionTimeout at timeout_ms).
    hard_timeout_factor: float = 3.0
    # close() waits this long for in-flight predictions before killing what is left.
    close_timeout_s: float = 30.0
    # Worker processes must have loaded their model within this time at start-up.
    start_timeout_s: float = 120.0
    # True: start() returns once every worker process has loaded its model (a broken skops file
    # fails start-up). False: start() returns after the files are verified and the ONNX models
    # loaded; process-pool models answer once their workers are up (requests wait for them within
    # their time limit), which cuts seconds of cold start. See `workers_ready`.
    wait_for_workers: bool = True
    # Serve every model of the manifest from this service's model server at this base URL (the
    # web tier's ML_REMOTE_URL); None: as the manifest says (local unless `executor: remote`).
    remote_url: str | None = None
    # Sent as `Authorization: Bearer` to remote models whose manifest entry says
    # `"auth": "service-token"` (this service's model server checks it: MODEL_SERVER_TOKEN).
    remote_token: str | None = None
    # Immediate retries of a remote call that could not connect (nothing reached the server; a
    # second one would wait 0.5 s, most of a time limit).
    remote_connect_retries: int = 1
    # How often each remote model's readiness is asked of its server.
    remote_probe_interval_s: float = 2.0

    def __post_init__(self) -> None:
        if self.onnx_threads < 1 or self.onnx_intra_op_threads < 1 or self.process_workers < 1:
            raise ValueError("onnx_threads, onnx_intra_op_threads and process_workers must be >= 1")
        if self.hard_timeout_factor < 1:
            raise ValueError("hard_timeout_factor must be >= 1")


@dataclass(frozen=True, slots=True)
class ModelMetrics:
    """A snapshot of one model's gauges and counters, for a metrics exporter."""

    name: str
    version: str
    queue_depth: int
    in_flight_batches: int
    worker_restarts: int
    stats: BatcherStats


@dataclass(slots=True)
class _Served:
    spec: ModelSpec
    runtime: Runtime
    batcher: MicroBatcher


class ModelRegistry:
    """Every model of the manifest, verified and loaded, each behind its own micro-batcher."""

    def __init__(
        self, settings: RegistrySettings | None = None, *, on_batch: BatchObserver | None = None
    ) -> None:
        self.settings = settings or RegistrySettings()
        self._on_batch = on_batch
        self._manifest: Manifest | None = None
        self._served: dict[str, _Served] = {}
        self._onnx_executor: ThreadPoolExecutor | None = None
        self._backends: dict[BackendKey, Backend] = {}
        self._ready = False

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True between a successful start() and close(): every file verified, every model loaded
        (process-pool models may still be starting when `wait_for_workers` is off)."""
        return self._ready

    @property
    def workers_ready(self) -> bool:
        """True when, in addition, every process-pool model has live workers with the model loaded
        (False while a pool starts or is being replaced after a crash)."""
        return self._ready and all(
            s.runtime.is_ready for s in self._served.values() if isinstance(s.runtime, ProcessPoolRuntime)
        )

    async def start(self) -> None:
        """Read the manifest, verify every file's sha256, load every model, start the workers.

        Any failure raises ModelLoadError (one line naming the file) after undoing what was started.
        """
        if self._ready:
            return
        model_dir = self.settings.model_dir
        started = time.perf_counter()
        try:
            manifest = await asyncio.to_thread(self._read_manifest)
            self._manifest = manifest
            self._onnx_executor = ThreadPoolExecutor(
                max_workers=self.settings.onnx_threads, thread_name_prefix="onnx"
            )
            pools: list[tuple[ModelSpec, ProcessPoolRuntime]] = []
            remote: dict[str, tuple[Runtime, int]] = {}
            for spec in manifest.models:
                if spec.remote is not None:
                    remote[spec.name] = (
                        RemoteRuntime(spec, self._backend(spec)),
                        spec.remote.max_connections,
                    )
                elif spec.format != "onnx":
                    # Verified here too, so a missing or corrupt file is reported by the web
                    # process before any worker starts (workers verify again what they load).
                    await asyncio.to_thread(read_verified, model_dir, spec)
                    pool = ProcessPoolRuntime(
                        spec,
                        model_path(model_dir, spec).resolve(),
                        display_path(model_dir, spec),
                        workers=self.settings.process_workers,
                        start_method=self.settings.start_method,
                        nice=self.settings.process_worker_nice,
                        start_timeout_s=self.settings.start_timeout_s,
                    )
                    pools.append((spec, pool))
            # Worker pools start side by side (each waits mostly on its processes) while the ONNX
            # models load here; then every model is served, in the manifest's order.
            wait = self.settings.wait_for_workers
            starting = asyncio.gather(*(pool.start(wait=wait) for _, pool in pools), return_exceptions=True)
            loaded: dict[str, tuple[Runtime, int]] = {
                **remote,
                **{spec.name: (pool, self.settings.process_workers) for spec, pool in pools},
            }
            try:
                for spec in manifest.models:
                    if spec.format == "onnx":
                        runtime: Runtime = await asyncio.to_thread(self._load_onnx, spec)
                        loaded[spec.name] = (runtime, self.settings.onnx_threads)
            except BaseException:
                await starting
                await asyncio.gather(*(p.close(force=True) for _, p in pools))
                raise
            failed = [r for r in await starting if isinstance(r, BaseException)]
            if failed:
                await asyncio.gather(*(p.close(force=True) for _, p in pools))
                raise failed[0]
            for spec in manifest.models:
                self._serve(spec, *loaded[spec.name])
        except BaseException:
            await self._shutdown(force=True)
            raise
        for served in self._served.values():
            served.batcher.start()
        for backend in self._backends.values():
            backend.start()
        self._ready = True
        log.info(
            "models ready: %s (%.1f s)",
            ", ".join(f"{s.spec.name}@{s.spec.version}" for s in self._served.values()),
            time.perf_counter() - started,
        )

    def _read_manifest(self) -> Manifest:
        manifest = load_manifest(self.settings.model_dir)
        if self.settings.remote_url is not None:
            return served_remotely(manifest, self.settings.remote_url)
        return manifest

    def _backend(self, spec: ModelSpec) -> Backend:
        """The one backend (pooled client, circuit breaker) of the server a remote model is on."""
        assert spec.remote is not None  # noqa: S101 - only called for remote models, for mypy
        remote = spec.remote
        token = self.settings.remote_token if remote.auth == "service-token" else None
        key = BackendKey(remote.base_url, token, remote.max_connections, remote.connect_timeout_ms)
        backend = self._backends.get(key)
        if backend is None:
            backend = self._backends[key] = Backend(
                key,
                connect_retries=self.settings.remote_connect_retries,
                probe_interval_s=self.settings.remote_probe_interval_s,
            )
        return backend

    def _load_onnx(self, spec: ModelSpec) -> OnnxRuntime:
        assert self._onnx_executor is not None  # noqa: S101 - created just before, for mypy
        data = read_verified(self.settings.model_dir, spec)
        return OnnxRuntime(
            spec,
            data,
            display_path(self.settings.model_dir, spec),
            self._onnx_executor,
            self.settings.onnx_intra_op_threads,
        )

    def _serve(self, spec: ModelSpec, runtime: Runtime, concurrency: int) -> None:
        config = BatchingConfig(
            max_batch_size=spec.batching.max_batch_size,
            max_batch_wait_s=spec.batching.max_batch_wait_ms / 1000,
            max_queue=spec.max_queue,
            timeout_ms=spec.timeout_ms,
            concurrency=concurrency,
            hard_timeout_factor=self.settings.hard_timeout_factor,
            enabled=self.settings.batching_enabled,
        )
        self._served[spec.name] = _Served(
            spec, runtime, MicroBatcher(spec.name, runtime, config, self._on_batch)
        )

    async def close(self) -> None:
        """Refuse new predictions, let in-flight ones finish (up to close_timeout_s), stop the pools.

        Every worker process is joined before this returns.
        """
        if not self._served and self._onnx_executor is None and not self._backends:
            return
        self._ready = False
        drained = True
        try:
            async with asyncio.timeout(self.settings.close_timeout_s):
                await asyncio.gather(*(s.batcher.drain() for s in self._served.values()))
        except TimeoutError:
            drained = False
            log.warning(
                "models: in-flight predictions still running after %.0f s; stopping them",
                self.settings.close_timeout_s,
            )
        await self._shutdown(force=not drained)

    async def _shutdown(self, *, force: bool) -> None:
        served = list(self._served.values())
        self._served.clear()
        for s in served:
            await s.batcher.stop()
        await asyncio.gather(*(s.runtime.close(force=force) for s in served), return_exceptions=True)
        backends = list(self._backends.values())
        self._backends.clear()
        await asyncio.gather(*(b.close() for b in backends), return_exceptions=True)
        executor, self._onnx_executor = self._onnx_executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    # --- lookups ----------------------------------------------------------------------------------

    @property
    def default_model(self) -> str:
        """Name of the model `/api/v1/predict` serves."""
        return self._require_manifest().default_model

    @property
    def heavy_model(self) -> str | None:
        """Name of the model `/api/v1/predict-heavy` serves, if the manifest names one."""
        return self._require_manifest().heavy_model

    def _require_manifest(self) -> Manifest:
        if self._manifest is None:
            raise ModelsNotReady()
        return self._manifest

    def get(self, name: str) -> ModelSpec:
        """The manifest entry of a served model, or ModelNotFound."""
        served = self._served.get(name)
        if served is None:
            raise ModelNotFound(name, self._served.keys())
        return served.spec

    def model_ready(self, name: str) -> bool:
        """Whether this model answers now: loaded, its worker pool up, or its server ready."""
        served = self._lookup(name)
        runtime = served.runtime
        if isinstance(runtime, ProcessPoolRuntime | RemoteRuntime):
            return runtime.is_ready
        return True

    def not_ready(self) -> builtins.list[str]:
        """The served models that would not answer now (a remote server down, a pool restarting)."""
        if not self._ready:
            return [spec.name for spec in self.list()]
        return [name for name in self._served if not self.model_ready(name)]

    def metrics(self) -> dict[str, ModelMetrics]:
        """Gauges and counters per model, read at scrape time by a metrics collector."""
        out: dict[str, ModelMetrics] = {}
        for name, s in self._served.items():
            restarts = s.runtime.restarts if isinstance(s.runtime, ProcessPoolRuntime) else 0
            out[name] = ModelMetrics(
                name, s.spec.version, s.batcher.queue_depth, s.batcher.in_flight, restarts, s.batcher.stats
            )
        return out

    def worker_pids(self, name: str) -> builtins.list[int]:
        """Process ids of a process-pool model's workers (empty for thread-run models)."""
        self.get(name)
        runtime = self._served[name].runtime
        return runtime.worker_pids() if isinstance(runtime, ProcessPoolRuntime) else []

    # --- predicting -------------------------------------------------------------------------------

    async def predict(self, name: str, rows: object, *, field: str = "rows") -> PredictionResult:
        """Predict a batch of rows (arrays in feature order or objects keyed by feature name).

        Raises ModelNotFound, InvalidInput, BatchTooLarge (validation, before any queueing),
        ModelOverloaded (queue full, at once), PredictionTimeout, ModelWorkerCrashed,
        PredictionFailed or ModelsNotReady. `field` prefixes the field paths of input errors.
        """
        served = self._lookup(name)
        return await self._predict(served, validate_rows(served.spec, rows, field=field))

    async def predict_one(self, name: str, features: object, *, field: str = "features") -> PredictionResult:
        """Predict one row; same errors as predict(), field paths like `features.2`."""
        served = self._lookup(name)
        return await self._predict(served, validate_features(served.spec, features, field=field))

    def _lookup(self, name: str) -> _Served:
        if not self._ready:
            raise ModelsNotReady()
        served = self._served.get(name)
        if served is None:
            raise ModelNotFound(name, self._served.keys())
        return served

    async def _predict(self, served: _Served, x: np.ndarray) -> PredictionResult:
        started = time.perf_counter()
        outputs = await served.batcher.submit(x)
        spec = served.spec
        return PredictionResult(
            spec.name,
            spec.version,
            spec.task,
            to_predictions(spec, outputs),
            (time.perf_counter() - started) * 1000,
        )

    def list(self) -> builtins.list[ModelSpec]:
        """Every served model's manifest entry, in manifest order."""
        if self._manifest is None:
            return []
        return [spec for spec in self._manifest.models if spec.name in self._served]
