"""/api/v1/model-repository: the fleet's desired model state, and loading and unloading versions
(admin). The same changes as the Open Inference Protocol's `/v2/repository/...`."""

from __future__ import annotations

from fastapi import APIRouter, Path

from app.api.deps import AdminUser, FleetDep
from app.api.v1 import PREFIX
from app.ml.fleet import FleetState
from app.ml.names import MODEL_NAME_PATTERN, VERSION_PATTERN
from app.schemas.common import AUTHENTICATED_ERRORS, problem_responses
from app.schemas.model_state import AliasPublic, LoadedVersion, ModelState, StateChange, VersionHere
from app.services.model_fleet import ModelFleet

router = APIRouter(
    prefix=f"{PREFIX}/model-repository",
    tags=["model repository"],
    responses=problem_responses(*AUTHENTICATED_ERRORS),
)

ModelName = Path(pattern=MODEL_NAME_PATTERN, description="The model's name.")
Version = Path(pattern=VERSION_PATTERN, description="The version, as the manifest lists it.")
HISTORY = 20


async def _public(fleet: ModelFleet, state: FleetState) -> ModelState:
    return ModelState(
        revision=state.revision,
        changed_by=state.changed_by,
        changed_at=state.changed_at,
        loaded=[LoadedVersion(name=m, version=v) for m, v in sorted(state.loaded)],
        aliases=[AliasPublic.of(a) for _, a in sorted(state.aliases.items())],
        here=[
            VersionHere(name=v.name, version=v.version, state=v.state, reason=v.reason) for v in fleet.index()
        ],
        here_revision=fleet.registry.revision,
        history=[
            StateChange(
                revision=c.revision, changed_by=c.changed_by, action=c.action, changed_at=c.changed_at
            )
            for c in await fleet.history(HISTORY)
        ],
    )


@router.get("", summary="The fleet's desired model state (admin)")
async def read_state(_admin: AdminUser, fleet: FleetDep) -> ModelState:
    """What every process should serve, who changed it last and when, the latest changes, and how
    the process that answered stands (`here`)."""
    return await _public(fleet, await fleet.state())


@router.post(
    "/{name}/versions/{version}/load",
    summary="Load a version on every worker and replica (admin)",
    responses=problem_responses(404, 409, 422),
)
async def load_version(
    admin: AdminUser, fleet: FleetDep, name: str = ModelName, version: str = Version
) -> ModelState:
    """The file's sha256 is checked and a warm-up row run here first; a file that fails either is
    refused (409 naming the file) and nothing changes. Then every process loads it within
    `MODEL_STATE_POLL_SECONDS`. Loading routes nothing to it: point an alias at it."""
    return await _public(fleet, await fleet.load(admin.id, name, version))


@router.post(
    "/{name}/versions/{version}/unload",
    summary="Unload a version everywhere (admin)",
    responses=problem_responses(404, 409, 422),
)
async def unload_version(
    admin: AdminUser, fleet: FleetDep, name: str = ModelName, version: str = Version
) -> ModelState:
    """Refused (409) while an alias routes to it. Each process lets its in-flight requests finish."""
    return await _public(fleet, await fleet.unload(admin.id, name, version))
