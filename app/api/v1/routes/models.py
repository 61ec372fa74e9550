"""/api/v1/models: the models clients read, batch predictions by model name (and version or
alias), and the aliases admins point."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from app.api.deps import AdminUser, FleetDep, InferenceDep, ModelReader, Predictor, QualityServiceDep
from app.api.v1 import PREFIX
from app.ml.fleet import ALIAS_PATTERN
from app.ml.manifest import ModelSpec
from app.ml.names import MODEL_NAME_PATTERN, VERSION_PATTERN
from app.schemas.common import AUTHENTICATED_ERRORS, JSON_BODY_ERRORS, problem_responses
from app.schemas.model_state import AliasPublic, AliasSummary, AliasUpdate
from app.schemas.prediction import (
    AliasRoute,
    BatchPredictRequest,
    BatchPredictResponse,
    FeatureInfo,
    ModelInfo,
    ModelQuality,
    ShadowAgreementPublic,
    VersionQualityPublic,
    batch_response,
)
from app.services.inference import InferenceService
from app.services.quality import QUALITY_GAUGE_WINDOW

router = APIRouter(
    prefix=f"{PREFIX}/models", tags=["models"], responses=problem_responses(*AUTHENTICATED_ERRORS)
)

ModelName = Path(pattern=MODEL_NAME_PATTERN, description="The model's name.")
VersionRef = Path(pattern=VERSION_PATTERN, description="A version of the model, or one of its aliases.")
AliasName = Path(pattern=ALIAS_PATTERN, description="The alias (`default`, `production`, ...).")


def model_info(inference: InferenceService, spec: ModelSpec) -> ModelInfo:
    return ModelInfo(
        name=spec.name,
        version=spec.version,
        task=spec.task,
        description=spec.description,
        executor=spec.executor,
        features=[FeatureInfo(name=f.name, type=f.type) for f in spec.features],
        labels=list(spec.labels),
        max_batch_size=spec.batching.max_batch_size,
        timeout_ms=spec.timeout_ms,
        example_request={"rows": [{f.name: 0.0 for f in spec.features}]},
        versions=inference.versions(spec.name),
        aliases={
            a.name: [AliasRoute(version=s.version, weight=s.weight) for s in a.splits]
            for a in inference.aliases(spec.name)
        },
    )


@router.get("", summary="List the served models")
async def list_models(_user: ModelReader, inference: InferenceDep) -> list[ModelInfo]:
    """Each model as its `default` alias serves it, with the versions loaded and the aliases."""
    return [model_info(inference, spec) for spec in inference.models()]


@router.get("/{name}", summary="A model's metadata and input schema", responses=problem_responses(404, 422))
async def read_model(_user: ModelReader, inference: InferenceDep, name: str = ModelName) -> ModelInfo:
    return model_info(inference, inference.model(name))


@router.get(
    "/{name}/quality",
    summary="Live quality of each version (admins)",
    responses=problem_responses(403, 404, 422),
)
async def model_quality(
    *,
    _admin: AdminUser,
    inference: InferenceDep,
    quality: QualityServiceDep,
    name: str = ModelName,
    last: Annotated[
        int | None,
        Query(ge=1, le=1_000_000, description="The newest N labelled rows of each version (default 1,000)."),
    ] = None,
    since: Annotated[datetime | None, Query(description="Rows predicted at or after this time.")] = None,
    until: Annotated[datetime | None, Query(description="Rows predicted before this time.")] = None,
) -> ModelQuality:
    """For each version loaded here (and each that has feedback), what the truths sent back for its
    answers say (`POST /api/v1/predictions/{prediction_id}/feedback`): accuracy and log loss for a
    classifier, MAE and RMSE for a regressor, with the number of labelled rows behind them; and
    each shadow against the primary on the same requests (how often the labels agree, or the mean
    absolute difference of values); and, for each version loaded here whose entry has a reference,
    its drift: the Population Stability Index of each feature and of its answers against its
    reference sample (over 0.2: `drifted`). The window: the newest `last` labelled rows of each
    version (the newest `last` copies a shadow answered; for drift, the newest ten-minute periods
    that hold its `last` newest rows), or those predicted in [`since`, `until`) (drift: the periods
    that start in it); a figure
    with no row in it is null."""
    spec = inference.model(name)
    if last is None and since is None and until is None:
        last = QUALITY_GAUGE_WINDOW
    served = [inference.model(spec.name, version) for version in inference.versions(spec.name)]
    versions = await quality.quality(spec.name, served, last=last, since=since, until=until)
    window = (
        f"last {last} labelled" if last is not None else f"predicted in [{since or '...'}, {until or '...'})"
    )
    return ModelQuality(
        model=spec.name,
        task=spec.task,
        window=window,
        versions=[VersionQualityPublic.model_validate(v, from_attributes=True) for v in versions],
        shadows=[
            ShadowAgreementPublic.model_validate(a, from_attributes=True)
            for a in await quality.shadows(spec, last=last, since=since, until=until)
        ],
    )


@router.post(
    "/{name}/predict",
    summary="Predict one row or a batch",
    responses=problem_responses(404, *JSON_BODY_ERRORS, 500, 504),
)
async def predict_rows(
    body: BatchPredictRequest, user: Predictor, inference: InferenceDep, name: str = ModelName
) -> BatchPredictResponse:
    """Rows as arrays in feature order or objects keyed by feature name; at most the model's
    `max_batch_size` rows (413 beyond). Concurrent requests are batched together by the server."""
    result = await inference.predict_rows(user.id, name, body.rows)
    return batch_response(result)


@router.post(
    "/{name}/versions/{version}/predict",
    summary="Predict with one version (or alias) of a model",
    responses=problem_responses(404, *JSON_BODY_ERRORS, 500, 504),
)
async def predict_version(
    body: BatchPredictRequest,
    user: Predictor,
    inference: InferenceDep,
    name: str = ModelName,
    version: str = VersionRef,
) -> BatchPredictResponse:
    """As `/models/{name}/predict`, for one version loaded side by side with others, or for an
    alias (`production`, a canary split): `version` in the answer names the one that served."""
    result = await inference.predict_rows(user.id, name, body.rows, version=version)
    return batch_response(result)


@router.get("/{name}/aliases", summary="A model's aliases", responses=problem_responses(404, 422))
async def list_aliases(_user: ModelReader, fleet: FleetDep, name: str = ModelName) -> list[AliasSummary]:
    """As the fleet's desired state has them (each process follows within a poll). Which admin
    pointed each is in the state admins read (`GET /api/v1/model-repository`)."""
    return [AliasSummary.of(a) for a in await fleet.aliases(name)]


@router.put(
    "/{name}/aliases/{alias}",
    summary="Point an alias, or split it between versions (admin)",
    responses=problem_responses(404, 409, *JSON_BODY_ERRORS),
)
async def set_alias(
    body: AliasUpdate, admin: AdminUser, fleet: FleetDep, name: str = ModelName, alias: str = AliasName
) -> AliasPublic:
    """`{"version": "2.0.0"}`, or a canary: `{"split": [{"version": "1.0.0", "weight": 90},
    {"version": "2.0.0", "weight": 10}], "sticky": true}`. Every version must be loaded (409);
    weights are whole percent adding up to 100 (422). A worker moves the alias once it has loaded
    the versions, so a route never breaks; all follow within `MODEL_STATE_POLL_SECONDS`."""
    shadow = body.shadow.shadow() if body.shadow is not None else None
    changed = await fleet.set_alias(admin.id, name, alias, body.splits(), sticky=body.sticky, shadow=shadow)
    return AliasPublic.of(changed)


@router.delete(
    "/{name}/aliases/{alias}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove an alias (admin)",
    responses=problem_responses(404, 409, 422),
)
async def delete_alias(
    admin: AdminUser, fleet: FleetDep, name: str = ModelName, alias: str = AliasName
) -> None:
    """Every model keeps its `default` alias (409)."""
    await fleet.delete_alias(admin.id, name, alias)
