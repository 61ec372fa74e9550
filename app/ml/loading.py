"""Loading: a manifest entry made into a served version (its file's hash verified, its runtime built
by its kind, app.ml.formats, a warm-up row run, a micro-batcher in front), and back again.

`Loader` owns what versions share: the thread pool of the thread kinds and one backend (pooled
client, circuit breaker) per remote server. It decides nothing about which versions to load
(app.ml.converging) or where requests go (app.ml.routing).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from app.ml.batching import BatchingConfig, BatchObserver, MicroBatcher
from app.ml.errors import ModelError, ModelLoadError
from app.ml.fleet import Key
from app.ml.formats import RuntimeKind, runtime_kind
from app.ml.manifest import (
    Manifest,
    ModelSpec,
    display_path,
    load_manifest,
    model_path,
    read_verified,
    served_remotely,
)
from app.ml.predictions import to_predictions
from app.ml.remote import Backend, BackendKey, RemoteRuntime
from app.ml.routing import Served
from app.ml.runtimes.base import Runtime, ThreadContext, in_threads
from app.ml.runtimes.processes import ProcessPoolRuntime
from app.ml.settings import RegistrySettings

log = logging.getLogger(__name__)

Built = tuple[ModelSpec, Runtime, int]  # the entry, its runtime, how many batches it runs at once


class Loader:
    def __init__(self, settings: RegistrySettings, on_batch: BatchObserver | None) -> None:
        self.settings = settings
        self._on_batch = on_batch
        self._threads: ThreadPoolExecutor | None = None
        self._backends: dict[BackendKey, Backend] = {}

    @property
    def holds_resources(self) -> bool:
        return self._threads is not None or bool(self._backends)

    def read_manifest(self) -> Manifest:
        manifest = load_manifest(self.settings.model_dir)
        if self.settings.remote_url is not None:
            return served_remotely(manifest, self.settings.remote_url)
        return manifest

    def open(self) -> None:
        self._threads = ThreadPoolExecutor(max_workers=self.settings.onnx_threads, thread_name_prefix="onnx")

    def start_backends(self) -> None:
        for backend in self._backends.values():
            backend.start()

    # --- building ---------------------------------------------------------------------------------

    async def build_many(self, specs: list[ModelSpec]) -> tuple[list[Built], dict[Key, str]]:
        """Start-up: worker pools start side by side (each waits mostly on its processes) while
        the thread kinds load here; remote models are only described (their readiness is polled,
        so a model server that is not up yet does not fail this start). A version that cannot
        be loaded is left out, with the reason: (what was built, {version: reason})."""
        pools: list[tuple[ModelSpec, ProcessPoolRuntime]] = []
        built: dict[Key, Built] = {}
        failures: dict[Key, str] = {}
        for spec in specs:
            if spec.remote is not None:
                built[(spec.name, spec.version)] = (
                    spec,
                    RemoteRuntime(spec, self._backend(spec)),
                    spec.remote.max_connections,
                )
            elif _kind(spec).executor == "process":
                # Verified here too, so a missing or corrupt file is reported by the web process
                # before any worker starts (workers verify again what they load).
                try:
                    await asyncio.to_thread(read_verified, self.settings.model_dir, spec)
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
                if spec.remote is None and _kind(spec).executor == "thread":
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

    async def build(self, spec: ModelSpec) -> Built:
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
        elif _kind(spec).executor == "thread":
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
            implementation=_kind(spec).implementation,
            workers=self.settings.process_workers,
            start_method=self.settings.start_method,
            nice=self.settings.process_worker_nice,
            start_timeout_s=self.settings.start_timeout_s,
        )

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

    def _load_in_threads(self, spec: ModelSpec) -> Runtime:
        assert self._threads is not None  # noqa: S101 - created at start, for mypy
        data = read_verified(self.settings.model_dir, spec)
        threads = ThreadContext(self._threads, self.settings.onnx_intra_op_threads)
        return in_threads(_kind(spec)).build(spec, data, display_path(self.settings.model_dir, spec), threads)

    # --- serving and unloading --------------------------------------------------------------------

    def serve(self, spec: ModelSpec, runtime: Runtime, concurrency: int) -> Served:
        """The version behind its own micro-batcher, started."""
        config = BatchingConfig(
            max_batch_size=spec.batching.max_batch_size,
            max_batch_wait_s=spec.batching.max_batch_wait_ms / 1000,
            max_queue=spec.max_queue,
            timeout_ms=spec.timeout_ms,
            concurrency=concurrency,
            hard_timeout_factor=self.settings.hard_timeout_factor,
            enabled=self.settings.batching_enabled,
        )
        served = Served(
            spec, runtime, MicroBatcher(spec.name, runtime, config, self._on_batch, version=spec.version)
        )
        served.batcher.start()
        return served

    async def unload(self, key: Key, served: Served) -> None:
        """A version no route leads to any more: its in-flight and queued requests finish (up to
        close_timeout_s), then its runtime stops."""
        drained = True
        try:
            async with asyncio.timeout(self.settings.close_timeout_s):
                await served.batcher.drain()
        except TimeoutError:
            drained = False
        await served.batcher.stop()
        await served.runtime.close(force=not drained)
        log.info("model %s@%s unloaded", *key)

    async def shutdown(self, served: list[Served], *, force: bool) -> None:
        """Stop every version given, then what they shared (the backends, the thread pool)."""
        for s in served:
            await s.batcher.stop()
        await asyncio.gather(*(s.runtime.close(force=force) for s in served), return_exceptions=True)
        backends = list(self._backends.values())
        self._backends.clear()
        await asyncio.gather(*(b.close() for b in backends), return_exceptions=True)
        executor, self._threads = self._threads, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)


def _kind(spec: ModelSpec) -> RuntimeKind:
    """A local model's runtime kind (the manifest accepted only formats of the table)."""
    assert spec.format is not None  # noqa: S101 - a local model has one, for mypy
    return runtime_kind(spec.format)
