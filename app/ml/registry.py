"""The model registry: the model versions this process serves, and the routes to them.

One instance per process (web worker or model server), opened in the lifespan
(`await registry.start(state)`) and closed at shutdown (`await registry.close()`). What it loads
and where each alias points follow a `FleetState` (app.ml.fleet): `start` loads the state it is
given, `converge` moves to a new one without a restart (loading first, then moving routes, then
unloading what nothing routes to any more, after its in-flight requests finish). Routes call
`registry.predict(...)` and map the domain errors of `app.ml.errors` to HTTP; nothing here knows
about HTTP or the database.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.ml.batching import BatcherStats, BatchingConfig, BatchObserver, MicroBatcher
from app.ml.errors import ModelError, ModelLoadError, ModelNotFound, ModelsNotReady, VersionUnavailable
from app.ml.fleet import DEFAULT_ALIAS, Alias, FleetState, Key, VersionNotFound, seed
from app.ml.formats import RuntimeKind, runtime_kind
from app.ml.inputs import validate_features, validate_rows
from app.ml.manifest import (
    Manifest,
    ModelSpec,
    display_manifest,
    display_path,
    load_manifest,
    model_path,
    read_verified,
    served_remotely,
)
from app.ml.predictions import PredictionResult, to_predictions
from app.ml.remote import Backend, BackendKey, RemoteRuntime
from app.ml.runtimes.base import Runtime, ThreadContext, in_threads
from app.ml.runtimes.processes import ProcessPoolRuntime, StartMethod

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
    # A version the desired state no longer loads is unloaded this long after (0: at once). The
    # model server waits a few polls, so web workers still routing to it have moved on first.
    unload_grace_s: float = 0.0
    # A version that failed to load is tried again after this long.
    load_retry_s: float = 10.0

    def __post_init__(self) -> None:
        if self.onnx_threads < 1 or self.onnx_intra_op_threads < 1 or self.process_workers < 1:
            raise ValueError("onnx_threads, onnx_intra_op_threads and process_workers must be >= 1")
        if self.hard_timeout_factor < 1:
            raise ValueError("hard_timeout_factor must be >= 1")


@dataclass(frozen=True, slots=True)
class ModelMetrics:
    """A snapshot of one model version's gauges and counters, for a metrics exporter."""

    name: str
    version: str
    queue_depth: int
    in_flight_batches: int
    worker_restarts: int
    stats: BatcherStats


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """One version as this process sees it, for the repository index."""

    name: str
    version: str
    state: str  # READY, LOADING or UNAVAILABLE (the protocol's repository states)
    reason: str


@dataclass(slots=True)
class _Served:
    spec: ModelSpec
    runtime: Runtime
    batcher: MicroBatcher


_Built = tuple[ModelSpec, Runtime, int]


class ModelRegistry:
    """The loaded model versions, each behind its own micro-batcher, and each model's aliases."""

    def __init__(
        self, settings: RegistrySettings | None = None, *, on_batch: BatchObserver | None = None
    ) -> None:
        self.settings = settings or RegistrySettings()
        self._on_batch = on_batch
        self._manifest: Manifest | None = None
        self._served: dict[Key, _Served] = {}
        # The aliases requests follow here: those of the desired state whose versions are all
        # loaded here (an alias whose new target is still loading keeps its previous route).
        self._routes: dict[str, dict[str, Alias]] = {}
        self._desired: FleetState | None = None
        self._failed: dict[Key, tuple[str, float]] = {}
        # Versions loaded ahead of the state that will name them (an admin's load, a web tier's
        # repository call): (monotonic deadline, revision applied when loaded). Not unloaded
        # before the deadline, unless a later state is applied (see converge).
        self._pinned: dict[Key, tuple[float, int]] = {}
        self._undesired_since: dict[Key, float] = {}
        self._lock = asyncio.Lock()
        self._onnx_executor: ThreadPoolExecutor | None = None
        self._backends: dict[BackendKey, Backend] = {}
        self._ready = False

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True between a successful start() and close(): every version of the state tried, those
        that could be taken loaded (process-pool models may still be starting when
        `wait_for_workers` is off); see `index()` for those that could not."""
        return self._ready

    @property
    def workers_ready(self) -> bool:
        """True when, in addition, every process-pool model has live workers with the model loaded
        (False while a pool starts or is being replaced after a crash)."""
        return self._ready and all(
            s.runtime.is_ready for s in self._served.values() if s.spec.executor == "process"
        )

    @property
    def revision(self) -> int | None:
        """The revision of the desired state this process has converged on (None before start)."""
        return self._desired.revision if self._desired is not None else None

    @property
    def settled(self) -> bool:
        """Every version of the desired state loaded here and nothing else left to unload."""
        desired = self._desired
        if desired is None:
            return False
        effective = {(m, name): a for m, aliases in self._routes.items() for name, a in aliases.items()}
        return set(self._served) == set(desired.loaded) and effective == dict(desired.aliases)

    async def start(self, state: FleetState | None = None) -> None:
        """Read the manifest, then load what `state` says (None: the manifest's `seed`), each file's
        sha256 verified, each model loaded, the worker pools started.

        A version this process cannot take (not in its manifest, its entry refused, its file
        missing, corrupt or not loadable) is logged, reported UNAVAILABLE by `index()` with the
        reason and tried again after `load_retry_s` by `converge`, as a running process does: the
        rest is served. Only a manifest that cannot be read at all raises ModelLoadError (one line
        naming it), after undoing what was started.
        """
        if self._ready:
            return
        started = time.perf_counter()
        try:
            manifest = await asyncio.to_thread(self._read_manifest)
            self._manifest = manifest
            state = state if state is not None else seed(manifest)
            self._onnx_executor = ThreadPoolExecutor(
                max_workers=self.settings.onnx_threads, thread_name_prefix="onnx"
            )
            specs = [spec for spec in manifest.models if (spec.name, spec.version) in state.loaded]
            for key in sorted(state.loaded - {(s.name, s.version) for s in specs}):
                self._cannot_take(key, self._absent(manifest, key))
            built, failures = await self._build_many(specs)
            for spec, runtime, concurrency in built:
                self._serve(spec, runtime, concurrency)
            for key, reason in failures.items():
                self._cannot_take(key, f"could not be loaded: {reason}")
        except BaseException:
            await self._shutdown(force=True)
            raise
        for backend in self._backends.values():
            backend.start()
        self._desired = state
        self._set_routes(state)
        self._ready = True
        log.info(
            "models ready: %s (%.1f s)",
            ", ".join(f"{name}@{version}" for name, version in self._served),
            time.perf_counter() - started,
        )

    def _cannot_take(self, key: Key, reason: str) -> None:
        self._failed[key] = (reason, time.monotonic())
        log.warning("model %s@%s: %s; not served here", *key, reason)

    @staticmethod
    def _absent(manifest: Manifest, key: Key) -> str:
        """Why a version the state names has no entry this process can take."""
        rejected = manifest.rejection(*key)
        return rejected.reason if rejected is not None else "not in this process's manifest"

    async def _build_many(
        self, specs: builtins.list[ModelSpec]
    ) -> tuple[builtins.list[_Built], dict[Key, str]]:
        """Start-up: worker pools start side by side (each waits mostly on its processes) while
        the ONNX models load here; remote models are only described (their readiness is polled,
        so a model server that is not up yet does not fail this start). A version that cannot
        be loaded is left out, with the reason: (what was built, {version: reason})."""
        model_dir = self.settings.model_dir
        pools: builtins.list[tuple[ModelSpec, ProcessPoolRuntime]] = []
        built: dict[Key, _Built] = {}
        failures: dict[Key, str] = {}
        for spec in specs:
            if spec.remote is not None:
                built[(spec.name, spec.version)] = (
                    spec,
                    RemoteRuntime(spec, self._backend(spec)),
                    spec.remote.max_connections,
                )
            elif self._kind(spec).executor == "process":
                # Verified here too, so a missing or corrupt file is reported by the web process
                # before any worker starts (workers verify again what they load).
                try:
                    await asyncio.to_thread(read_verified, model_dir, spec)
                except ModelError as exc:
                    failures[(spec.name, spec.version)] = str(exc)
                    continue
                pools.append((spec, self._pool(spec)))
        wait = self.settings.wait_for_workers
        starting = asyncio.gather(*(pool.start(wait=wait) for _, pool in pools), return_exceptions=True)
        for spec, pool in pools:
            built[(spec.name, spec.version)] = (spec, pool, self.settings.process_workers)
        try:
            for spec in specs:
                if spec.remote is None and self._kind(spec).executor == "thread":
                    try:
                        runtime: Runtime = await asyncio.to_thread(self._load_in_threads, spec)
                    except ModelError as exc:
                        failures[(spec.name, spec.version)] = str(exc)
                        continue
                    built[(spec.name, spec.version)] = (spec, runtime, self.settings.onnx_threads)
        except BaseException:
            await starting
            await asyncio.gather(*(p.close(force=True) for _, p in pools))
            raise
        results = await starting
        unexpected = [r for r in results if isinstance(r, BaseException) and not isinstance(r, ModelError)]
        if unexpected:
            await asyncio.gather(*(p.close(force=True) for _, p in pools))
            raise unexpected[0]
        for (spec, pool), result in zip(pools, results, strict=True):
            if isinstance(result, ModelError):
                key = (spec.name, spec.version)
                failures[key] = str(result)
                del built[key]
                await pool.close(force=True)
        return [built[(s.name, s.version)] for s in specs if (s.name, s.version) in built], failures

    async def _build(self, spec: ModelSpec) -> _Built:
        """At run time: one version loaded (its file's hash verified, its workers up, or its model
        server told to load it) and a warm-up row run through it, or ModelLoadError."""
        runtime: Runtime
        if spec.remote is not None:
            backend = self._backend(spec)
            remote = RemoteRuntime(spec, backend)
            runtime, concurrency = remote, spec.remote.max_connections
            try:
                await remote.load_on_server()
            except BaseException:
                await remote.close()
                raise
            backend.start()
        elif self._kind(spec).executor == "thread":
            runtime = await asyncio.to_thread(self._load_in_threads, spec)
            concurrency = self.settings.onnx_threads
        else:
            await asyncio.to_thread(read_verified, self.settings.model_dir, spec)
            pool = self._pool(spec)
            try:
                await pool.start(wait=True)
            except BaseException:
                await pool.close(force=True)
                raise
            runtime, concurrency = pool, self.settings.process_workers
        try:
            await self._warm_up(spec, runtime)
        except BaseException:
            await runtime.close(force=True)
            raise
        return spec, runtime, concurrency

    async def _warm_up(self, spec: ModelSpec, runtime: Runtime) -> None:
        """One row of zeros, end to end: a version that cannot answer it is never routed to."""
        where = self._where(spec)
        x = np.zeros((1, len(spec.features)), dtype=np.float32)
        try:
            outputs = await runtime.run(x, spec.timeout_ms / 1000 * self.settings.hard_timeout_factor)
            predictions = to_predictions(spec, outputs)
        except ModelError as exc:
            raise ModelLoadError(where, f"the warm-up prediction failed: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - whatever the runtime raised, the version cannot serve
            reason = f"the warm-up prediction failed: {type(exc).__name__}: {exc}"
            raise ModelLoadError(where, reason) from None
        if len(predictions) != 1:
            raise ModelLoadError(where, f"the warm-up prediction gave {len(predictions)} rows for 1")
        runtime.answered()

    def _where(self, spec: ModelSpec) -> str:
        if spec.remote is not None:
            return f"{spec.remote.base_url}{spec.remote.model_path}"
        return display_path(self.settings.model_dir, spec)

    def _pool(self, spec: ModelSpec) -> ProcessPoolRuntime:
        return ProcessPoolRuntime(
            spec,
            model_path(self.settings.model_dir, spec).resolve(),
            display_path(self.settings.model_dir, spec),
            implementation=self._kind(spec).implementation,
            workers=self.settings.process_workers,
            start_method=self.settings.start_method,
            nice=self.settings.process_worker_nice,
            start_timeout_s=self.settings.start_timeout_s,
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

    @staticmethod
    def _kind(spec: ModelSpec) -> RuntimeKind:
        """A local model's runtime kind (the manifest accepted only formats of the table)."""
        assert spec.format is not None  # noqa: S101 - a local model has one, for mypy
        return runtime_kind(spec.format)

    def _load_in_threads(self, spec: ModelSpec) -> Runtime:
        assert self._onnx_executor is not None  # noqa: S101 - created at start, for mypy
        data = read_verified(self.settings.model_dir, spec)
        threads = ThreadContext(self._onnx_executor, self.settings.onnx_intra_op_threads)
        where = display_path(self.settings.model_dir, spec)
        return in_threads(self._kind(spec)).build(spec, data, where, threads)

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
        served = _Served(spec, runtime, MicroBatcher(spec.name, runtime, config, self._on_batch))
        self._served[(spec.name, spec.version)] = served
        served.batcher.start()

    async def _serve_loaded(self, spec: ModelSpec) -> None:
        """Load one version at run time and serve it, unless the registry closed meanwhile (its
        runtime is then stopped here, not left running with nothing to close it)."""
        built = await self._build(spec)
        if not self._ready:
            await built[1].close(force=True)
            raise ModelsNotReady()
        self._serve(*built)

    # --- converging on a desired state ------------------------------------------------------------

    async def converge(self, state: FleetState) -> None:
        """Move to `state`: load the versions it adds (a failure is recorded, retried after
        `load_retry_s`, and leaves the routes as they were), then route each alias to its
        versions once they are all loaded here, then unload the versions nothing routes to any
        more, each after its in-flight requests have finished."""
        async with self._lock:
            if not self._ready:
                return
            self._desired = state
            for key, (deadline, revision) in builtins.list(self._pinned.items()):
                # A load ahead of the state is held until a state names it, or, for a load made
                # for another process (a web tier's repository call: a finite hold), until any
                # later state arrives: then the change that would have named it came and went
                # (a load and an unload within one poll) or never came (refused). The unload
                # grace covers a state applied just before the one naming it.
                if key in state.loaded or (deadline != float("inf") and state.revision > revision):
                    del self._pinned[key]
            wanted = [k for k in sorted(state.loaded) if k not in self._served]
            manifest = self._require_manifest()
            if any(manifest.find(*k) is None for k in wanted):
                manifest = await self._reread_manifest()
            now = time.monotonic()
            for key in wanted:
                if not self._ready:
                    return  # closed while an earlier version loaded
                failed = self._failed.get(key)
                if failed is not None and now - failed[1] < self.settings.load_retry_s:
                    continue
                spec = manifest.find(*key)
                if spec is None:
                    self._cannot_take(key, self._absent(manifest, key))
                    continue
                try:
                    await self._serve_loaded(spec)
                except ModelError as exc:
                    self._failed[key] = (str(exc), time.monotonic())
                    log.warning("model %s@%s: could not be loaded: %s", *key, exc)
                    continue
                self._failed.pop(key, None)
                log.info("model %s@%s loaded", *key)
            if not self._ready:
                return
            self._set_routes(state)
            await self._unload_unrouted(state)

    @property
    def pending(self) -> bool:
        """Something of the desired state is still to do here (a load to retry, an unload waiting
        for its grace period): converge() again even if the state has not changed."""
        return self._desired is not None and not self.settled

    def _set_routes(self, state: FleetState) -> None:
        routes: dict[str, dict[str, Alias]] = {}
        for (model, name), alias in state.aliases.items():
            effective: Alias | None = alias
            if not all((model, v) in self._served for v in alias.versions):
                effective = self._routes.get(model, {}).get(name)
                if effective is not None and not all((model, v) in self._served for v in effective.versions):
                    effective = None
            if effective is not None:
                routes.setdefault(model, {})[name] = effective
        self._routes = routes

    async def _unload_unrouted(self, state: FleetState) -> None:
        now = time.monotonic()
        routed = {(m, v) for m, aliases in self._routes.items() for a in aliases.values() for v in a.versions}
        for key in builtins.list(self._served):
            if key in state.loaded or key in routed or self._pinned.get(key, (0.0, 0))[0] > now:
                self._undesired_since.pop(key, None)
                continue
            since = self._undesired_since.setdefault(key, now)
            if now - since >= self.settings.unload_grace_s:
                self._undesired_since.pop(key, None)
                await self._unload(key)
        for key in builtins.list(self._pinned):
            if self._pinned[key][0] <= now:
                del self._pinned[key]

    async def _unload(self, key: Key) -> None:
        """Out of every route at once; then its in-flight and queued requests finish (up to
        close_timeout_s) before its runtime stops."""
        served = self._served.pop(key)
        for aliases in self._routes.values():
            for name in [n for n, a in aliases.items() if key[1] in a.versions and a.model == key[0]]:
                del aliases[name]
        drained = True
        try:
            async with asyncio.timeout(self.settings.close_timeout_s):
                await served.batcher.drain()
        except TimeoutError:
            drained = False
        await served.batcher.stop()
        await served.runtime.close(force=not drained)
        log.info("model %s@%s unloaded", *key)

    async def _reread_manifest(self) -> Manifest:
        """The manifest as it is on disk now (`models add` may have added versions), or, if it
        cannot be read, the one read before."""
        try:
            self._manifest = await asyncio.to_thread(self._read_manifest)
        except ModelLoadError as exc:
            log.warning("models: the manifest cannot be read again (%s); using the one read before", exc)
        return self._require_manifest()

    async def load_now(self, name: str, version: str | None, *, hold_s: float = float("inf")) -> ModelSpec:
        """Load one version here, now (its hash verified, a warm-up row run), ahead of the
        desired state that will name it: an admin's load verifies this way before the state
        changes. No version: the last one the manifest lists. The version is not unloaded by
        converge() for `hold_s` seconds (until `release()`).

        Raises ModelNotFound or VersionNotFound (not in the manifest), ModelLoadError."""
        if not self._ready:
            raise ModelsNotReady()
        manifest = await self._reread_manifest()
        versions = manifest.versions(name)
        if not versions:
            raise ModelNotFound(name, manifest.names())
        version = version or versions[-1]
        spec = manifest.find(name, version)
        rejected = manifest.rejection(name, version)
        if spec is None and rejected is not None:
            raise ModelLoadError(display_manifest(self.settings.model_dir), rejected.reason)
        if spec is None:
            raise VersionNotFound(name, version, versions)
        key = (name, version)
        async with self._lock:
            self._pinned[key] = (time.monotonic() + hold_s, self.revision or 0)
            if key not in self._served:
                try:
                    await self._serve_loaded(spec)
                except BaseException as exc:
                    self._pinned.pop(key, None)
                    if isinstance(exc, ModelError):
                        self._failed[key] = (str(exc), time.monotonic())
                    raise
                self._failed.pop(key, None)
                log.info("model %s@%s loaded", *key)
        return spec

    def release(self, name: str, version: str) -> None:
        """End a `load_now` hold: converge() may unload the version if the state does not name it."""
        self._pinned.pop((name, version), None)

    async def unload_now(self, name: str, version: str) -> None:
        """Unload one version here, now (the model server's repository extension)."""
        async with self._lock:
            if (name, version) not in self._served:
                raise VersionNotFound(name, version, tuple(self.versions(name)))
            self._pinned.pop((name, version), None)
            await self._unload((name, version))

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
        served = builtins.list(self._served.values())
        self._served.clear()
        self._routes = {}
        for s in served:
            await s.batcher.stop()
        await asyncio.gather(*(s.runtime.close(force=force) for s in served), return_exceptions=True)
        backends = builtins.list(self._backends.values())
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

    @property
    def manifest(self) -> Manifest:
        """The manifest as last read (at start, and again by each load)."""
        return self._require_manifest()

    def _require_manifest(self) -> Manifest:
        if self._manifest is None:
            raise ModelsNotReady()
        return self._manifest

    def _names(self) -> builtins.list[str]:
        names = dict.fromkeys(self._manifest.names() if self._manifest else ())
        names.update(dict.fromkeys(m for m, _ in self._served))
        return [n for n in names if n in self._routes or any(m == n for m, _ in self._served)]

    def get(self, name: str, version: str | None = None) -> ModelSpec:
        """A served model's manifest entry: that of `version` (a version or an alias), or of the
        version its `default` alias mostly routes to; ModelNotFound or VersionNotFound."""
        if version is not None:
            alias = self._routes.get(name, {}).get(version)
            if (name, version) not in self._served and alias is not None:
                version = alias.primary
            return self._resolve(name, version, None, any_state=True).spec
        alias = self._routes.get(name, {}).get(DEFAULT_ALIAS)
        if alias is not None:
            return self._served[(name, alias.primary)].spec
        for (model, _), served in self._served.items():
            if model == name:
                return served.spec
        raise ModelNotFound(name, self._names())

    def versions(self, name: str) -> builtins.list[str]:
        """The versions of a model loaded here."""
        return sorted(v for m, v in self._served if m == name)

    def aliases(self, name: str) -> builtins.list[Alias]:
        """The aliases requests to this model follow here."""
        return [a for _, a in sorted(self._routes.get(name, {}).items())]

    def loaded(self) -> dict[str, builtins.list[str]]:
        """Every model's versions loaded here."""
        return {name: self.versions(name) for name in self._names()}

    def index(self) -> builtins.list[VersionStatus]:
        """Every version of the manifest, and every one the desired state names, with its state
        here: READY (loaded), LOADING (wanted, not loaded yet), UNAVAILABLE (not wanted, or
        failed to load: the reason says)."""
        desired = self._desired.loaded if self._desired is not None else frozenset()
        manifest = self._manifest
        keys = dict.fromkeys((s.name, s.version) for s in (manifest.models if manifest else ()))
        rejected = {r.key: r.reason for r in (manifest.rejected if manifest else ())}
        keys.update(dict.fromkeys(rejected))
        keys.update(dict.fromkeys(sorted(desired | set(self._served))))
        out = []
        for key in keys:
            if key in self._served:
                out.append(VersionStatus(*key, "READY", ""))
            elif key in self._failed:
                out.append(VersionStatus(*key, "UNAVAILABLE", self._failed[key][0]))
            elif key in rejected:
                out.append(VersionStatus(*key, "UNAVAILABLE", rejected[key]))
            elif key in desired:
                out.append(VersionStatus(*key, "LOADING", ""))
            else:
                out.append(VersionStatus(*key, "UNAVAILABLE", "not loaded"))
        return out

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether this model answers now: loaded, its worker pool up, or its server ready."""
        if not self._ready:
            raise ModelsNotReady()
        return self._served[(name, self.get(name, version).version)].runtime.is_ready

    def not_ready(self) -> builtins.list[str]:
        """The served models that would not answer now (a remote server down, a pool restarting)."""
        if not self._ready:
            return [spec.name for spec in self.list()]
        return [name for name in self._names() if not self.model_ready(name)]

    def metrics(self) -> dict[Key, ModelMetrics]:
        """Gauges and counters per model version, read at scrape time by a metrics collector."""
        out: dict[Key, ModelMetrics] = {}
        for key, s in self._served.items():
            out[key] = ModelMetrics(
                key[0],
                key[1],
                s.batcher.queue_depth,
                s.batcher.in_flight,
                s.runtime.restarts,
                s.batcher.stats,
            )
        return out

    def worker_pids(self, name: str, version: str | None = None) -> builtins.list[int]:
        """Process ids of a process-pool model's workers (empty for thread-run models)."""
        return self._served[(name, self.get(name, version).version)].runtime.worker_pids()

    def list(self) -> builtins.list[ModelSpec]:
        """Each served model's entry (that of the version its `default` alias mostly routes to),
        in manifest order."""
        return [self.get(name) for name in self._names()]

    # --- predicting -------------------------------------------------------------------------------

    def route(self, name: str, version: str | None = None, caller: int | None = None) -> ModelSpec:
        """The version one request goes to: `version` if it names a loaded version, else the alias
        it names (None: `default`), split by weight (sticky per `caller` where the alias says)."""
        return self._resolve(name, version, caller).spec

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
        served = self._resolve(name, version, caller)
        return await self._predict(served, validate_rows(served.spec, rows, field=field))

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
        served = self._resolve(name, version, caller)
        return await self._predict(served, validate_features(served.spec, features, field=field))

    def _resolve(self, name: str, ref: str | None, caller: int | None, *, any_state: bool = False) -> _Served:
        if not self._ready and not any_state:
            raise ModelsNotReady()
        if ref is not None:
            served = self._served.get((name, ref))
            if served is not None:
                return served
        aliases = self._routes.get(name)
        alias = aliases.get(ref or DEFAULT_ALIAS) if aliases is not None else None
        if alias is not None:
            return self._served[(name, alias.pick(caller))]
        desired = self._desired
        wanted = desired is not None and name in desired.models()
        if aliases is None and not wanted and not any(m == name for m, _ in self._served):
            raise ModelNotFound(name, self._names())
        named = desired is not None and ((name, ref) in desired.loaded or (name, ref) in desired.aliases)
        if ref is None or named:
            # Named by the desired state but not routable here: still loading, or it could not be
            # taken here (then the answer says why, and when it is tried again).
            raise self._unavailable(name, ref)
        known = (*self.versions(name), *(a.name for a in self.aliases(name)))
        raise VersionNotFound(name, ref, known)

    def _unavailable(self, name: str, ref: str | None) -> ModelsNotReady:
        desired = self._desired
        if desired is None:
            return ModelsNotReady()
        alias = desired.aliases.get((name, ref or DEFAULT_ALIAS))
        versions = alias.versions if alias is not None else (ref,) if ref is not None else ()
        missing = [v for v in versions if (name, v) not in self._served] or list(versions)
        if not missing:
            return ModelsNotReady()
        version = missing[0]
        failed = self._failed.get((name, version))
        retry = math.ceil(self.settings.load_retry_s) if failed is not None else 1
        return VersionUnavailable(name, version, failed[0] if failed is not None else None, retry)

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
