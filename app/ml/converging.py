"""Converging: this process moving to the fleet's desired state (app.ml.fleet), without a restart.

`Converger.start` loads the state it is given; `converge` moves to a new one (loading first, then
moving routes, then unloading what nothing routes to any more, after its in-flight requests
finish); `load_now`/`release`/`unload_now` act on one version ahead of the state. It owns what
that takes: which versions failed to load here and when (`failed`, tried again after
`load_retry_s`), which are held loaded ahead of the state (`_pinned`), since when a version is no
longer wanted (`_undesired_since`, for `unload_grace_s`), one lock so two changes never
interleave, and whether the registry is open (`ready`). Loading is app.ml.loading's; the tables
requests read are app.ml.routing's.
"""

from __future__ import annotations

import asyncio
import logging
import time

from app.ml.errors import ModelError, ModelLoadError, ModelNotFound, ModelsNotReady
from app.ml.fleet import FleetState, Key, VersionNotFound, seed
from app.ml.loading import Loader
from app.ml.manifest import Manifest, ModelSpec, display_manifest
from app.ml.routing import Router
from app.ml.settings import RegistrySettings

log = logging.getLogger(__name__)


class Converger:
    def __init__(self, settings: RegistrySettings, loader: Loader) -> None:
        self.settings = settings
        self.loader = loader
        # (reason, monotonic time) of the versions that could not be loaded here.
        self.failed: dict[Key, tuple[str, float]] = {}
        self.router = Router(self.failed, settings.load_retry_s)
        # Versions loaded ahead of the state that will name them (an admin's load, a web tier's
        # repository call): (monotonic deadline, revision applied when loaded). Not unloaded
        # before the deadline, unless a later state is applied (see converge).
        self._pinned: dict[Key, tuple[float, int]] = {}
        self._undesired_since: dict[Key, float] = {}
        self._lock = asyncio.Lock()
        self._applied: int | None = None
        self.ready = False

    @property
    def revision(self) -> int | None:
        """The revision of the last state whose routes this process applied: not the one it is
        still loading versions for (`router.desired`), so a reader of /readyz who sees it move
        finds the new routes answering."""
        return self._applied

    @property
    def pending(self) -> bool:
        """Something of the desired state is still to do here (a load to retry, an unload waiting
        for its grace period): converge() again even if the state has not changed."""
        return self.router.desired is not None and not self.router.settled

    # --- start and close --------------------------------------------------------------------------

    async def start(self, state: FleetState | None = None) -> None:
        """See ModelRegistry.start."""
        if self.ready:
            return
        router = self.router
        started = time.perf_counter()
        try:
            manifest = await asyncio.to_thread(self.loader.read_manifest)
            router.manifest = manifest
            state = state if state is not None else seed(manifest)
            self.loader.open()
            specs = [spec for spec in manifest.models if (spec.name, spec.version) in state.loaded]
            for key in sorted(state.loaded - {(s.name, s.version) for s in specs}):
                self._cannot_take(key, _absent(manifest, key))
            built, failures = await self.loader.build_many(specs)
            for spec, runtime, concurrency in built:
                router.served[(spec.name, spec.version)] = self.loader.serve(spec, runtime, concurrency)
            for key, reason in failures.items():
                self._cannot_take(key, f"could not be loaded: {reason}")
        except BaseException:
            await self._shutdown(force=True)
            raise
        self.loader.start_backends()
        router.desired = state
        router.set_routes(state)
        self._applied = state.revision
        self.ready = True
        log.info(
            "models ready: %s (%.1f s)",
            ", ".join(f"{name}@{version}" for name, version in router.served),
            time.perf_counter() - started,
        )

    async def close(self) -> None:
        """See ModelRegistry.close."""
        if not self.router.served and not self.loader.holds_resources:
            return
        self.ready = False
        drained = True
        try:
            async with asyncio.timeout(self.settings.close_timeout_s):
                await asyncio.gather(*(s.batcher.drain() for s in self.router.served.values()))
        except TimeoutError:
            drained = False
            log.warning(
                "models: in-flight predictions still running after %.0f s; stopping them",
                self.settings.close_timeout_s,
            )
        await self._shutdown(force=not drained)

    async def _shutdown(self, *, force: bool) -> None:
        served = list(self.router.served.values())
        self.router.served.clear()
        self.router.routes = {}
        await self.loader.shutdown(served, force=force)

    def _cannot_take(self, key: Key, reason: str) -> None:
        self.failed[key] = (reason, time.monotonic())
        log.warning("model %s@%s: %s; not served here", *key, reason)

    async def _serve_loaded(self, spec: ModelSpec) -> None:
        """Load one version at run time and serve it, unless the registry closed meanwhile (its
        runtime is then stopped here, not left running with nothing to close it)."""
        built = await self.loader.build(spec)
        if not self.ready:
            await built[1].close(force=True)
            raise ModelsNotReady()
        self.router.served[(spec.name, spec.version)] = self.loader.serve(*built)

    # --- converging on a desired state ------------------------------------------------------------

    async def converge(self, state: FleetState) -> None:
        """See ModelRegistry.converge."""
        async with self._lock:
            if not self.ready:
                return
            router = self.router
            router.desired = state
            for key, (deadline, revision) in list(self._pinned.items()):
                # A load ahead of the state is held until a state names it, or, for a load made
                # for another process (a web tier's repository call: a finite hold), until any
                # later state arrives: then the change that would have named it came and went
                # (a load and an unload within one poll) or never came (refused). The unload
                # grace covers a state applied just before the one naming it.
                if key in state.loaded or (deadline != float("inf") and state.revision > revision):
                    del self._pinned[key]
            wanted = [k for k in sorted(state.loaded) if k not in router.served]
            manifest = router.require_manifest()
            if any(manifest.find(*k) is None for k in wanted):
                manifest = await self.reread_manifest()
            now = time.monotonic()
            for key in wanted:
                if not self.ready:
                    return  # closed while an earlier version loaded
                failed = self.failed.get(key)
                if failed is not None and now - failed[1] < self.settings.load_retry_s:
                    continue
                spec = manifest.find(*key)
                if spec is None:
                    self._cannot_take(key, _absent(manifest, key))
                    continue
                try:
                    await self._serve_loaded(spec)
                except ModelError as exc:
                    self.failed[key] = (str(exc), time.monotonic())
                    log.warning("model %s@%s: could not be loaded: %s", *key, exc)
                    continue
                self.failed.pop(key, None)
                log.info("model %s@%s loaded", *key)
            if not self.ready:
                return
            router.set_routes(state)
            self._applied = state.revision
            await self._unload_unrouted(state)

    async def _unload_unrouted(self, state: FleetState) -> None:
        now = time.monotonic()
        routed = self.router.routed()
        for key in list(self.router.served):
            if key in state.loaded or key in routed or self._pinned.get(key, (0.0, 0))[0] > now:
                self._undesired_since.pop(key, None)
                continue
            since = self._undesired_since.setdefault(key, now)
            if now - since >= self.settings.unload_grace_s:
                self._undesired_since.pop(key, None)
                await self._unload(key)
        for key in list(self._pinned):
            if self._pinned[key][0] <= now:
                del self._pinned[key]

    async def _unload(self, key: Key) -> None:
        """Out of every route at once; then its in-flight and queued requests finish (up to
        close_timeout_s) before its runtime stops."""
        await self.loader.unload(key, self.router.drop(key))

    async def reread_manifest(self) -> Manifest:
        """The manifest as it is on disk now (`models add` may have added versions), or, if it
        cannot be read, the one read before."""
        try:
            self.router.manifest = await asyncio.to_thread(self.loader.read_manifest)
        except ModelLoadError as exc:
            log.warning("models: the manifest cannot be read again (%s); using the one read before", exc)
        return self.router.require_manifest()

    # --- one version, ahead of the state ----------------------------------------------------------

    async def load_now(self, name: str, version: str | None, *, hold_s: float = float("inf")) -> ModelSpec:
        """See ModelRegistry.load_now."""
        if not self.ready:
            raise ModelsNotReady()
        manifest = await self.reread_manifest()
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
            if key not in self.router.served:
                try:
                    await self._serve_loaded(spec)
                except BaseException as exc:
                    self._pinned.pop(key, None)
                    if isinstance(exc, ModelError):
                        self.failed[key] = (str(exc), time.monotonic())
                    raise
                self.failed.pop(key, None)
                log.info("model %s@%s loaded", *key)
        return spec

    def release(self, name: str, version: str) -> None:
        """End a `load_now` hold: converge() may unload the version if the state does not name it."""
        self._pinned.pop((name, version), None)

    async def unload_now(self, name: str, version: str) -> None:
        """Unload one version here, now (the model server's repository extension)."""
        async with self._lock:
            if (name, version) not in self.router.served:
                raise VersionNotFound(name, version, tuple(self.router.versions(name)))
            self._pinned.pop((name, version), None)
            await self._unload((name, version))


def _absent(manifest: Manifest, key: Key) -> str:
    """Why a version the state names has no entry this process can take."""
    rejected = manifest.rejection(*key)
    return rejected.reason if rejected is not None else "not in this process's manifest"
