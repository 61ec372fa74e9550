"""The fleet's desired state: which model versions are loaded, and where each alias sends requests.

One `FleetState` is stored in the database (app.services.model_fleet); every web worker, every
replica and the model server converge their registry on it (`ModelRegistry.converge`). Changes are
made here, as pure functions of the current state that refuse what would break a route, so that
the rules are the same whoever applies them:

- a version can be routed to only once it is loaded, and cannot be unloaded while an alias routes
  to it;
- every loaded model has a `default` alias, used by requests that name no version;
- a split's weights are whole percentages adding up to 100;
- an alias's name is never the name of a version of its model, in either order (a version named
  like an alias would be shadowed by it on some routes and shadow it on others);
- an alias may carry a shadow: a loaded version, not one it routes to, that gets a copy of a whole
  percent of its requests (its answers recorded, never returned: app.services.shadow).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from app.ml.errors import ModelError
from app.ml.manifest import Manifest
from app.ml.names import DEFAULT_ALIAS as _DEFAULT_ALIAS

DEFAULT_ALIAS = _DEFAULT_ALIAS  # every loaded model's alias (no version may be named so)
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
MAX_SPLITS = 4

Key = tuple[str, str]  # (model, version)


class StateConflict(ModelError):
    """The change would leave a broken route (an alias to an unloaded version, a model without a
    default), or concerns something in a state that forbids it; nothing was changed."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class VersionNotFound(ModelError):
    """No such version (or alias) of a model, in the manifest or loaded."""

    def __init__(self, model: str, ref: str, known: tuple[str, ...]) -> None:
        self.model = model
        self.ref = ref
        self.known = known
        super().__init__(f"model {model!r} has no version or alias {ref!r}")


@dataclass(frozen=True, slots=True)
class Split:
    version: str
    weight: int  # percent, 1..100


@dataclass(frozen=True, slots=True)
class Shadow:
    version: str
    percent: int  # of the alias's requests copied to it, 1..100


@dataclass(frozen=True, slots=True)
class Alias:
    """A name for one version of a model (`default`, `production`, ...), or for a weighted split
    between versions (a canary). Sticky splits send one caller to the same version every time."""

    model: str
    name: str
    splits: tuple[Split, ...]
    sticky: bool = False
    changed_by: int | None = None
    changed_at: datetime | None = None
    shadow: Shadow | None = None

    def __post_init__(self) -> None:
        versions = [s.version for s in self.splits]
        if not 1 <= len(versions) <= MAX_SPLITS or len(set(versions)) != len(versions):
            raise ValueError(f"an alias routes to 1 to {MAX_SPLITS} distinct versions")
        if sum(s.weight for s in self.splits) != 100 or any(s.weight < 1 for s in self.splits):
            raise ValueError("split weights must be whole percentages adding up to 100")
        if self.shadow is not None and not 1 <= self.shadow.percent <= 100:
            raise ValueError("a shadow takes a whole percentage of requests, 1 to 100")

    def shadowed(self) -> bool:
        """Whether one request's copy goes to the shadow (drawn per request)."""
        shadow = self.shadow
        return shadow is not None and (
            shadow.percent >= 100 or random.randrange(100) < shadow.percent  # noqa: S311 - sampling
        )

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(s.version for s in self.splits)

    @property
    def primary(self) -> str:
        """The version with the largest share (the first listed of equals): what metadata shows."""
        return max(self.splits, key=lambda s: s.weight).version

    def pick(self, caller: int | None) -> str:
        """The version one request goes to."""
        splits = self.splits
        if len(splits) == 1:
            return splits[0].version
        if self.sticky and caller is not None:
            digest = hashlib.blake2b(f"{self.model}/{self.name}/{caller}".encode(), digest_size=8).digest()
            bucket = int.from_bytes(digest) % 100
        else:
            bucket = random.randrange(100)  # noqa: S311 - traffic splitting, not security
        for split in splits:
            if bucket < split.weight:
                return split.version
            bucket -= split.weight
        return splits[-1].version


@dataclass(frozen=True, slots=True)
class FleetState:
    """`revision` 0 is the state a fresh deployment starts from (`seed`); every stored change adds one."""

    revision: int
    loaded: frozenset[Key]
    aliases: Mapping[Key, Alias] = field(default_factory=dict)  # (model, alias name) -> Alias
    changed_by: int | None = None
    changed_at: datetime | None = None

    def models(self) -> tuple[str, ...]:
        return tuple(sorted({model for model, _ in self.loaded}))

    def versions(self, model: str) -> tuple[str, ...]:
        return tuple(sorted(v for m, v in self.loaded if m == model))

    def aliases_of(self, model: str) -> tuple[Alias, ...]:
        return tuple(a for (m, _), a in sorted(self.aliases.items()) if m == model)

    # --- changes (each returns a new state, or raises StateConflict / VersionNotFound) ------------

    def load(self, model: str, version: str) -> FleetState:
        """Loaded; the model's first version also becomes its `default`."""
        if version == DEFAULT_ALIAS or (model, version) in self.aliases:
            raise StateConflict(
                f"{version!r} is an alias of model {model!r}; a version named like it cannot be "
                "loaded (add the file again under another version)."
            )
        aliases = dict(self.aliases)
        if (model, DEFAULT_ALIAS) not in aliases:
            aliases[(model, DEFAULT_ALIAS)] = Alias(model, DEFAULT_ALIAS, (Split(version, 100),))
        return replace(self, loaded=self.loaded | {(model, version)}, aliases=aliases)

    def unload(self, model: str, version: str) -> FleetState:
        if (model, version) not in self.loaded:
            raise VersionNotFound(model, version, self.versions(model))
        users = [
            a.name
            for a in self.aliases_of(model)
            if version in a.versions or (a.shadow is not None and a.shadow.version == version)
        ]
        if users:
            raise StateConflict(
                f"Version {version!r} of model {model!r} is routed to by alias "
                f"{', '.join(repr(u) for u in users)}; point it elsewhere first."
            )
        return replace(self, loaded=self.loaded - {(model, version)})

    def unload_model(self, model: str, protected: tuple[str, ...] = ()) -> FleetState:
        """Every version and alias of a model; refused for the models the service's own routes use."""
        if model not in self.models():
            raise VersionNotFound(model, "*", ())
        if model in protected:
            raise StateConflict(
                f"Model {model!r} serves /api/v1/predict or /api/v1/predict-heavy; unload one "
                "version at a time instead."
            )
        return replace(
            self,
            loaded=frozenset(k for k in self.loaded if k[0] != model),
            aliases={k: a for k, a in self.aliases.items() if k[0] != model},
        )

    def set_alias(self, alias: Alias) -> FleetState:
        if (alias.model, alias.name) in self.loaded:
            raise StateConflict(
                f"{alias.name!r} is a version of model {alias.model!r}; an alias needs another name."
            )
        shadow = alias.shadow
        if shadow is not None and shadow.version in alias.versions:
            raise StateConflict(
                f"Version {shadow.version!r} is routed to by alias {alias.name!r}; a shadow is "
                "another version, given a copy of the requests."
            )
        wanted = (*alias.versions, *((shadow.version,) if shadow is not None else ()))
        missing = [v for v in wanted if (alias.model, v) not in self.loaded]
        if missing:
            raise StateConflict(
                f"Version {missing[0]!r} of model {alias.model!r} is not loaded; load it before "
                "routing to it."
            )
        return replace(self, aliases={**self.aliases, (alias.model, alias.name): alias})

    def delete_alias(self, model: str, name: str) -> FleetState:
        if (model, name) not in self.aliases:
            raise VersionNotFound(model, name, tuple(a.name for a in self.aliases_of(model)))
        if name == DEFAULT_ALIAS:
            raise StateConflict(
                f"Model {model!r} keeps its {DEFAULT_ALIAS!r} alias; point it elsewhere instead."
            )
        return replace(self, aliases={k: a for k, a in self.aliases.items() if k != (model, name)})

    # --- stored form ------------------------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        """The JSON stored in the database (without revision and author, which are columns)."""
        return {
            "loaded": [{"model": m, "version": v} for m, v in sorted(self.loaded)],
            "aliases": [
                {
                    "model": a.model,
                    "name": a.name,
                    "splits": [{"version": s.version, "weight": s.weight} for s in a.splits],
                    "sticky": a.sticky,
                    "shadow": (
                        {"version": a.shadow.version, "percent": a.shadow.percent} if a.shadow else None
                    ),
                    "changed_by": a.changed_by,
                    "changed_at": a.changed_at.isoformat() if a.changed_at else None,
                }
                for _, a in sorted(self.aliases.items())
            ],
        }

    @classmethod
    def from_document(
        cls, revision: int, doc: Mapping[str, Any], changed_by: int | None, changed_at: datetime | None
    ) -> FleetState:
        aliases = {}
        for raw in doc.get("aliases", []):
            alias = Alias(
                raw["model"],
                raw["name"],
                tuple(Split(s["version"], int(s["weight"])) for s in raw["splits"]),
                bool(raw.get("sticky", False)),
                raw.get("changed_by"),
                datetime.fromisoformat(raw["changed_at"]) if raw.get("changed_at") else None,
                _shadow(raw.get("shadow")),
            )
            aliases[(alias.model, alias.name)] = alias
        loaded = frozenset((raw["model"], raw["version"]) for raw in doc.get("loaded", []))
        return cls(revision, loaded, aliases, changed_by, changed_at)


def _shadow(raw: Mapping[str, Any] | None) -> Shadow | None:
    return Shadow(raw["version"], int(raw["percent"])) if raw else None


def seed(manifest: Manifest) -> FleetState:
    """What a fresh deployment serves: the first version the manifest lists for each model, as
    its `default` (an entry this process sets aside included: it is then reported UNAVAILABLE,
    as a version whose file is corrupt is)."""
    state = FleetState(0, frozenset())
    first: dict[str, str] = {}
    for name, version in manifest.listed():  # an entry set aside too: it is reported unavailable
        first.setdefault(name, version)
    for name, version in first.items():
        try:
            state = state.load(name, version)
        except StateConflict:  # a version named `default`, set aside by the manifest anyway
            continue
    return state
