"""The model lifecycle without restarts: the fleet's desired state, kept in the database, and this
process's registry converging on it (`ModelFleet`, one per process).

Every process (web worker, replica, model server) polls the state's revision, one primary-key
row, every `poll_interval_s`, and converges when it changed (app.ml.registry.ModelRegistry.converge).
An admin's change is checked first where it is made (a load verifies the file's hash and runs a
warm-up row in this process before anything is stored), then stored as the next revision, guarded
by the revision it read (two admins changing at once: one applies, the other reads again and
applies to the result, or is refused). The process that made the change converges at once; the
others within a poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import structlog

from app.core.errors import AppError
from app.db.database import Database
from app.ml import errors as ml
from app.ml.fleet import Alias, FleetState, Shadow, Split, StateConflict, VersionNotFound, seed
from app.ml.registry import ModelRegistry, VersionStatus
from app.models import ModelStateChange
from app.models.base import utcnow
from app.repositories.model_state import ModelStateRepository, current_revision
from app.services.inference import translate

log = structlog.get_logger(__name__)

# A change read a revision another change then replaced: read again and retry, this many times.
CHANGE_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class Change:
    """What an admin asked, in a form stored in the history."""

    action: str
    apply: Callable[[FleetState], FleetState]


class ModelFleet:
    """This process's registry, kept converged on the desired state in the database; and the
    changes admins make to that state (`load`, `unload`, `set_alias`, `delete_alias`)."""

    def __init__(self, db: Database, registry: ModelRegistry, *, poll_interval_s: float) -> None:
        self.db = db
        self.registry = registry
        self.poll_interval_s = poll_interval_s
        self._poller: asyncio.Task[None] | None = None
        self._failing = False

    # --- this process -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the stored state (the manifest's seed if none is stored, or if the database cannot
        be read yet: the poll converges once it can), then poll."""
        state: FleetState | None = None
        try:
            state = await self._stored()
        except Exception as exc:  # noqa: BLE001 - any database failure: serve the seed, poll on
            self._note_failure(exc)
        await self.registry.start(state)
        self._poller = asyncio.create_task(self._poll_loop(), name="model-state-poll")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self.sync()
            except Exception as exc:  # noqa: BLE001 - the database may be down: keep serving, retry
                self._note_failure(exc)
            else:
                if self._failing:
                    self._failing = False
                    log.info("model_state_readable")

    def _note_failure(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            log.warning("model_state_unreadable", error=f"{type(exc).__name__}: {exc}"[:300])

    async def sync(self) -> None:
        """Converge on the stored state if its revision moved (or something is left to do here)."""
        async with self.db.statements() as db:
            revision = await current_revision(db)
        if revision != self.registry.revision or self.registry.pending:
            await self.registry.converge(await self.state())

    async def _stored(self) -> FleetState | None:
        async with self.db.session(read_only=True) as session:
            row = await ModelStateRepository(session).current()
        if row is None:
            return None
        return FleetState.from_document(row.revision, row.document, row.changed_by, row.changed_at)

    async def state(self) -> FleetState:
        """The desired state: as stored, or the manifest's seed while nothing is."""
        stored = await self._stored()
        return stored if stored is not None else self._seed()

    def _seed(self) -> FleetState:
        try:
            return seed(self.registry.manifest)
        except ml.ModelError as exc:
            raise translate(exc) from None

    def index(self) -> list[VersionStatus]:
        return self.registry.index()

    async def aliases(self, name: str) -> list[Alias]:
        """A model's aliases in the desired state (404 for a model it does not load)."""
        state = await self.state()
        if name not in state.models():
            raise translate(ml.ModelNotFound(name, state.models()))
        return list(state.aliases_of(name))

    async def history(self, limit: int) -> Sequence[ModelStateChange]:
        async with self.db.session(read_only=True) as session:
            return await ModelStateRepository(session).history(limit)

    # --- changes ----------------------------------------------------------------------------------

    async def load(self, actor: int, name: str, version: str | None) -> FleetState:
        """Load a version (None: the newest the manifest lists) everywhere: here first (hash,
        warm-up), and only then into the stored state, so a version that cannot serve is refused
        (409) with nothing changed and the old version serving on."""
        if version is not None:
            try:
                # A version named like one of the model's aliases: refused before any loading.
                (await self.state()).load(name, version)
            except ml.ModelError as exc:
                raise translate(exc) from None
        try:
            spec = await self.registry.load_now(name, version)
        except ml.ModelError as exc:
            raise translate(exc) from None
        try:
            return await self._change(
                actor, Change(f"load {name}@{spec.version}", lambda s: s.load(name, spec.version))
            )
        finally:
            self.registry.release(name, spec.version)

    async def unload(self, actor: int, name: str, version: str | None) -> FleetState:
        """Unload a version everywhere (refused while an alias routes to it), or, with no version,
        the whole model and its aliases (refused for the models of /api/v1/predict and
        /api/v1/predict-heavy). Each process lets the version's in-flight requests finish."""
        if version is None:
            protected = self._protected()
            return await self._change(
                actor, Change(f"unload {name}", lambda s: s.unload_model(name, protected))
            )
        return await self._change(
            actor, Change(f"unload {name}@{version}", lambda s: s.unload(name, version))
        )

    async def set_alias(
        self,
        actor: int,
        name: str,
        alias: str,
        splits: Sequence[tuple[str, int]],
        *,
        sticky: bool,
        shadow: Shadow | None = None,
    ) -> Alias:
        """Point an alias at one version, or split it between versions by weight; `shadow`: a
        version given a copy of a share of its requests (None: none)."""
        manifest = self.registry.manifest
        if not manifest.versions(name):
            raise translate(ml.ModelNotFound(name, manifest.names()))
        if alias in manifest.versions(name):
            raise translate(
                StateConflict(f"{alias!r} is a version of model {name!r}; an alias needs another name.")
            )
        for version in (*(v for v, _ in splits), *((shadow.version,) if shadow else ())):
            if manifest.find(name, version) is None:
                raise translate(VersionNotFound(name, version, manifest.versions(name)))
        described = " ".join(f"{v}:{w}" for v, w in splits)
        if sticky:
            described += " sticky"
        if shadow is not None:
            described += f" shadow {shadow.version}:{shadow.percent}%"

        def apply(state: FleetState) -> FleetState:
            target = Alias(name, alias, tuple(Split(v, w) for v, w in splits), sticky, actor, None, shadow)
            current = state.aliases.get((name, alias))
            if current is not None and (current.splits, current.sticky, current.shadow) == (
                target.splits,
                target.sticky,
                target.shadow,
            ):
                return state
            return state.set_alias(target)

        state = await self._change(actor, Change(f"alias {name}/{alias} -> {described}", apply))
        return state.aliases[(name, alias)]

    async def delete_alias(self, actor: int, name: str, alias: str) -> FleetState:
        return await self._change(
            actor, Change(f"delete alias {name}/{alias}", lambda s: s.delete_alias(name, alias))
        )

    def _protected(self) -> tuple[str, ...]:
        manifest = self.registry.manifest
        return tuple(n for n in (manifest.default_model, manifest.heavy_model) if n is not None)

    async def _change(self, actor: int, change: Change) -> FleetState:
        for _ in range(CHANGE_ATTEMPTS):
            async with self.db.session() as session:
                repo = ModelStateRepository(session)
                row = await repo.current()
                if row is None:
                    current = self._seed()
                else:
                    current = FleetState.from_document(
                        row.revision, row.document, row.changed_by, row.changed_at
                    )
                try:
                    new = change.apply(current)
                except ml.ModelError as exc:
                    raise translate(exc) from None
                if new == current:
                    return current  # nothing to change: no new revision
                new = _stamped(new, current, actor)
                changed_at = await repo.replace(current.revision, new.document(), actor, change.action)
                if changed_at is None:
                    await session.rollback()
                    continue  # another change came first: read it and apply to it
                await session.commit()
            new = replace(new, revision=current.revision + 1, changed_by=actor, changed_at=changed_at)
            log.info("model_state_changed", revision=new.revision, action=change.action, actor=actor)
            await self.registry.converge(new)
            return new
        raise ChangeContended


class ChangeContended(AppError):
    status, code, title = 409, "model-state-contended", "Conflict"

    def __init__(self) -> None:
        super().__init__("The model state kept changing under this request; retry it.")


def _stamped(state: FleetState, before: FleetState, actor: int) -> FleetState:
    """The aliases this change made or moved carry its author and time; the others keep theirs."""
    now = utcnow()
    aliases = {}
    for key, alias in state.aliases.items():
        old = before.aliases.get(key)
        moved = old is None or (old.splits, old.sticky) != (alias.splits, alias.sticky)
        aliases[key] = replace(alias, changed_by=actor, changed_at=now) if moved else alias
    return replace(state, aliases=aliases)


# --- the Open Inference Protocol's repository extension, on either tier ---------------------------


class ModelRepository(Protocol):
    """What `/v2/repository/...` does: fleet-wide on the web tier (admins), in this process alone
    on the model server (the service token)."""

    def index(self) -> list[VersionStatus]: ...

    async def load(self, actor: int, name: str, version: str | None) -> tuple[str, int | None]:
        """(the version loaded, the state's revision after, if it changed the state)"""
        ...

    async def unload(self, actor: int, name: str, version: str | None) -> int | None: ...


class FleetRepository:
    """The web tier's repository extension: a load or unload changes the fleet's desired state."""

    def __init__(self, fleet: ModelFleet) -> None:
        self.fleet = fleet

    def index(self) -> list[VersionStatus]:
        return self.fleet.index()

    async def load(self, actor: int, name: str, version: str | None) -> tuple[str, int | None]:
        state = await self.fleet.load(actor, name, version)
        # No version: the manifest's newest, which is what the fleet loaded.
        loaded = version or self.fleet.registry.manifest.versions(name)[-1]
        return loaded, state.revision

    async def unload(self, actor: int, name: str, version: str | None) -> int | None:
        return (await self.fleet.unload(actor, name, version)).revision


# A version the model server loads for a web tier is kept this long for the state to name it.
LOCAL_LOAD_HOLD_S = 120.0


class LocalRepository:
    """The model server's repository extension: loads and unloads in this process only (what a web
    tier asks before it stores a change; the state, polled, then keeps this process in step)."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def index(self) -> list[VersionStatus]:
        return self.registry.index()

    async def load(self, actor: int, name: str, version: str | None) -> tuple[str, int | None]:  # noqa: ARG002
        try:
            spec = await self.registry.load_now(name, version, hold_s=LOCAL_LOAD_HOLD_S)
        except ml.ModelError as exc:
            raise translate(exc) from None
        return spec.version, None

    async def unload(self, actor: int, name: str, version: str | None) -> int | None:  # noqa: ARG002
        versions = [version] if version is not None else self.registry.versions(name)
        if not versions:
            raise translate(ml.ModelNotFound(name, self.registry.loaded()))
        try:
            for each in versions:
                await self.registry.unload_now(name, each)
        except ml.ModelError as exc:
            raise translate(exc) from None
        return None
