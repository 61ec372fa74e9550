"""Routing: the versions loaded here, the aliases requests follow, and which version one request
goes to (resolved once per request: `Router.resolve` returns the `Served` version it predicts on).

Nothing here awaits, so what `resolve` returns is what the request is queued on. The tables are
filled by the loader (app.ml.loading) and moved by the converger (app.ml.converging); the facade
(app.ml.registry) checks that the registry is open before it routes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from app.ml.batching import BatcherStats, MicroBatcher
from app.ml.errors import ModelNotFound, ModelsNotReady, VersionUnavailable
from app.ml.fleet import DEFAULT_ALIAS, Alias, FleetState, Key, VersionNotFound
from app.ml.manifest import Manifest, ModelSpec
from app.ml.runtimes.base import Runtime


@dataclass(slots=True)
class Served:
    """One version loaded here: its manifest entry, its runtime and the micro-batcher before it."""

    spec: ModelSpec
    runtime: Runtime
    batcher: MicroBatcher


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


class Router:
    """What is served here and where each request goes. `failed` (the converger's) says why a
    version could not be loaded here, for the answers that name it."""

    def __init__(self, failed: Mapping[Key, tuple[str, float]], load_retry_s: float) -> None:
        self.served: dict[Key, Served] = {}
        # The aliases requests follow here: those of the desired state whose versions are all
        # loaded here (an alias whose new target is still loading keeps its previous route).
        self.routes: dict[str, dict[str, Alias]] = {}
        self.desired: FleetState | None = None
        self.manifest: Manifest | None = None  # as last read (at start, and again by each load)
        self._failed = failed
        self._load_retry_s = load_retry_s

    # --- one request ------------------------------------------------------------------------------

    def resolve(self, name: str, ref: str | None, caller: int | None) -> Served:
        """`ref` if it names a loaded version, else the alias it names (None: `default`), split by
        weight (sticky per `caller` where the alias says); ModelNotFound, VersionNotFound, or
        ModelsNotReady/VersionUnavailable for a version the desired state names but this process
        has not loaded (yet)."""
        aliases = self.routes.get(name)
        if ref is not None and (aliases is None or ref not in aliases):
            # An alias wins over a version of its name: such a version never enters the state
            # (FleetState.load), but one loaded ahead of it (load_now) must not take the alias's
            # requests.
            served = self.served.get((name, ref))
            if served is not None:
                return served
        alias = aliases.get(ref or DEFAULT_ALIAS) if aliases is not None else None
        if alias is not None:
            return self.served[(name, alias.pick(caller))]
        desired = self.desired
        wanted = desired is not None and name in desired.models()
        if aliases is None and not wanted and not any(m == name for m, _ in self.served):
            raise ModelNotFound(name, self.names())
        named = desired is not None and ((name, ref) in desired.loaded or (name, ref) in desired.aliases)
        if ref is None or named:
            # Named by the desired state but not routable here: still loading, or it could not be
            # taken here (then the answer says why, and when it is tried again).
            raise self._unavailable(name, ref)
        known = (*self.versions(name), *(a.name for a in self.aliases(name)))
        raise VersionNotFound(name, ref, known)

    def shadow(self, name: str, ref: str | None) -> Served | None:
        """The version a copy of this request goes to: the shadow of the alias `ref` names (None:
        `default`), drawn at its percent, if it is loaded here; else None (a version named
        directly has no shadow)."""
        aliases = self.routes.get(name)
        alias = aliases.get(ref or DEFAULT_ALIAS) if aliases is not None else None
        if alias is None or alias.shadow is None or not alias.shadowed():
            return None
        return self.served.get((name, alias.shadow.version))

    def _unavailable(self, name: str, ref: str | None) -> ModelsNotReady:
        desired = self.desired
        if desired is None:
            return ModelsNotReady()
        alias = desired.aliases.get((name, ref or DEFAULT_ALIAS))
        versions = alias.versions if alias is not None else (ref,) if ref is not None else ()
        missing = [v for v in versions if (name, v) not in self.served] or list(versions)
        if not missing:
            return ModelsNotReady()
        version = missing[0]
        failed = self._failed.get((name, version))
        retry = math.ceil(self._load_retry_s) if failed is not None else 1
        return VersionUnavailable(name, version, failed[0] if failed is not None else None, retry)

    # --- moving the routes ------------------------------------------------------------------------

    def set_routes(self, state: FleetState) -> None:
        """Each alias of `state` whose versions are all loaded here; one that is not keeps its
        previous route while that one's versions are still loaded."""
        routes: dict[str, dict[str, Alias]] = {}
        for (model, name), alias in state.aliases.items():
            effective: Alias | None = alias
            if not all((model, v) in self.served for v in alias.versions):
                effective = self.routes.get(model, {}).get(name)
                if effective is not None and not all((model, v) in self.served for v in effective.versions):
                    effective = None
            if effective is not None:
                routes.setdefault(model, {})[name] = effective
        self.routes = routes

    def routed(self) -> set[Key]:
        """The versions some alias routes to."""
        return {(m, v) for m, aliases in self.routes.items() for a in aliases.values() for v in a.versions}

    def drop(self, key: Key) -> Served:
        """A version out of the served table and out of every route, at once."""
        served = self.served.pop(key)
        for aliases in self.routes.values():
            for name in [n for n, a in aliases.items() if key[1] in a.versions and a.model == key[0]]:
                del aliases[name]
        return served

    @property
    def settled(self) -> bool:
        """Every version of the desired state loaded here and nothing else left to unload."""
        desired = self.desired
        if desired is None:
            return False
        effective = {(m, name): a for m, aliases in self.routes.items() for name, a in aliases.items()}
        return set(self.served) == set(desired.loaded) and effective == dict(desired.aliases)

    # --- lookups ----------------------------------------------------------------------------------

    def require_manifest(self) -> Manifest:
        if self.manifest is None:
            raise ModelsNotReady()
        return self.manifest

    def names(self) -> list[str]:
        names = dict.fromkeys(self.manifest.names() if self.manifest else ())
        names.update(dict.fromkeys(m for m, _ in self.served))
        return [n for n in names if n in self.routes or any(m == n for m, _ in self.served)]

    def get(self, name: str, version: str | None = None) -> ModelSpec:
        """A served model's manifest entry: that of `version` (a version or an alias), or of the
        version its `default` alias mostly routes to; ModelNotFound or VersionNotFound."""
        if version is not None:
            alias = self.routes.get(name, {}).get(version)
            if (name, version) not in self.served and alias is not None:
                version = alias.primary
            return self.resolve(name, version, None).spec
        alias = self.routes.get(name, {}).get(DEFAULT_ALIAS)
        if alias is not None:
            return self.served[(name, alias.primary)].spec
        for (model, _), served in self.served.items():
            if model == name:
                return served.spec
        raise ModelNotFound(name, self.names())

    def runtime(self, name: str, version: str | None = None) -> Runtime:
        return self.served[(name, self.get(name, version).version)].runtime

    def versions(self, name: str) -> list[str]:
        """The versions of a model loaded here."""
        return sorted(v for m, v in self.served if m == name)

    def aliases(self, name: str) -> list[Alias]:
        """The aliases requests to this model follow here."""
        return [a for _, a in sorted(self.routes.get(name, {}).items())]

    def index(self) -> list[VersionStatus]:
        """Every version of the manifest, and every one the desired state names, with its state
        here: READY (loaded), LOADING (wanted, not loaded yet), UNAVAILABLE (not wanted, or
        failed to load: the reason says)."""
        desired = self.desired.loaded if self.desired is not None else frozenset()
        manifest = self.manifest
        keys = dict.fromkeys((s.name, s.version) for s in (manifest.models if manifest else ()))
        rejected = {r.key: r.reason for r in (manifest.rejected if manifest else ())}
        keys.update(dict.fromkeys(rejected))
        keys.update(dict.fromkeys(sorted(desired | set(self.served))))
        out = []
        for key in keys:
            if key in self.served:
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

    def metrics(self) -> dict[Key, ModelMetrics]:
        """Gauges and counters per model version, read at scrape time by a metrics collector."""
        return {
            key: ModelMetrics(
                key[0],
                key[1],
                s.batcher.queue_depth,
                s.batcher.in_flight,
                s.runtime.restarts,
                s.batcher.stats,
            )
            for key, s in self.served.items()
        }
