"""Live quality per model version (issue 24): what the truths sent back say of each version's
answers, summed by SQL over `prediction_feedback` (app.services.feedback scores each row as its
truth arrives), and how far its inputs and answers drifted from its reference, summed by SQL over
`drift_counts` (app.ml.drift); never by loading the log into memory."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from app.core.errors import ValidationFailed
from app.db.database import Database
from app.ml.drift import ANSWERS, DRIFT_THRESHOLD, psi
from app.ml.manifest import Histogram, ModelSpec
from app.ml.registry import ModelRegistry
from app.observability import metrics
from app.repositories.predictions import PredictionRepository

# The window of the Prometheus gauges, and of `GET /models/{name}/quality` when it names none: each
# version's newest labelled rows.
QUALITY_GAUGE_WINDOW = 1000


@dataclass(frozen=True, slots=True)
class Shift:
    """One feature's (or the answers') PSI over a window; None with no row in it."""

    name: str
    psi: float | None
    drifted: bool | None  # psi over DRIFT_THRESHOLD


@dataclass(frozen=True, slots=True)
class Drift:
    rows: int  # rows asked about in the window
    since: datetime | None  # the window's first period (None: since the first row)
    features: list[Shift]
    prediction: Shift


@dataclass(frozen=True, slots=True)
class VersionQuality:
    version: str
    labelled: int  # feedback rows behind the figures
    accuracy: float | None = None
    log_loss: float | None = None
    mae: float | None = None
    rmse: float | None = None
    drift: Drift | None = None  # None: the version is not served here, or has no reference


@dataclass(frozen=True, slots=True)
class ShadowAgreement:
    version: str  # the primary's
    shadow_version: str
    compared: int  # requests copied and answered by both
    rows: int
    agreement: float | None = None  # classifiers: share of rows whose labels were alike
    mean_abs_difference: float | None = None  # regressors


class QualityService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def quality(
        self,
        name: str,
        served: list[ModelSpec],
        *,
        last: int | None,
        since: datetime | None,
        until: datetime | None,
        with_feedback: bool = True,
    ) -> list[VersionQuality]:
        """Each version of `served` (and, `with_feedback`, each other one that has feedback) over
        the window: its newest `last` labelled rows, or the rows predicted in [since, until). Its
        drift over the ten-minute periods that hold its newest `last` rows asked about, or those
        that start in [since, until)."""
        if last is not None and (since is not None or until is not None):
            raise ValidationFailed(
                "last: a window is the newest `last` labelled rows or a time range, not both",
                errors=[{"field": "last", "message": "not with since or until"}],
            )
        if since is not None and until is not None and since >= until:
            raise ValidationFailed(
                "until: must be after since", errors=[{"field": "until", "message": "must be after since"}]
            )
        async with self.db.session(read_only=True) as session:
            repo = PredictionRepository(session)
            specs = {spec.version: spec for spec in served}
            others = await repo.feedback_versions(name) if with_feedback else []
            every = sorted(set(specs) | set(others))
            out = []
            for version in every:
                sums = await repo.feedback_sums(name, version, last=last, since=since, until=until)
                n, n_class, correct, log_loss, n_reg, abs_sum, sq_sum = sums
                out.append(
                    VersionQuality(
                        version=version,
                        labelled=n,
                        accuracy=correct / n_class if n_class else None,
                        log_loss=log_loss / n_class if n_class else None,
                        mae=abs_sum / n_reg if n_reg else None,
                        rmse=math.sqrt(sq_sum / n_reg) if n_reg else None,
                        drift=await _drift(repo, specs.get(version), last=last, since=since, until=until),
                    )
                )
        return out

    async def shadows(
        self, spec: ModelSpec, *, last: int | None, since: datetime | None, until: datetime | None
    ) -> list[ShadowAgreement]:
        """Each shadow against the primary on the same requests: the model's newest `last` shadow
        records, or those made in [since, until)."""
        async with self.db.session(read_only=True) as session:
            sums = await PredictionRepository(session).shadow_sums(
                spec.name, last=last, since=since, until=until
            )
        return [
            ShadowAgreement(
                version=version,
                shadow_version=shadow_version,
                compared=compared,
                rows=rows,
                agreement=agreed / rows if agreed is not None and rows else None,
                mean_abs_difference=difference / rows if difference is not None and rows else None,
            )
            for version, shadow_version, compared, rows, agreed, difference in sums
        ]

    async def sample(self, registry: ModelRegistry) -> None:
        """The Prometheus gauges of every model's versions and shadows, over QUALITY_GAUGE_WINDOW
        (at a scrape)."""
        for spec in registry.list():
            figures = await self.quality(
                spec.name,
                [registry.get(spec.name, version) for version in registry.versions(spec.name)],
                last=QUALITY_GAUGE_WINDOW,
                since=None,
                until=None,
                with_feedback=False,  # the versions served here: a scrape reads a few index ranges
            )
            for q in figures:
                metrics.observe_quality(
                    spec.name,
                    q.version,
                    q.labelled,
                    {"accuracy": q.accuracy, "log_loss": q.log_loss, "mae": q.mae, "rmse": q.rmse},
                )
                if q.drift is not None:
                    metrics.observe_drift(
                        spec.name,
                        q.version,
                        q.drift.rows,
                        {shift.name: shift.psi for shift in q.drift.features},
                        q.drift.prediction.psi,
                    )
            for a in await self.shadows(spec, last=QUALITY_GAUGE_WINDOW, since=None, until=None):
                metrics.observe_shadow(
                    spec.name,
                    a.version,
                    a.shadow_version,
                    {"agreement": a.agreement, "mean_abs_difference": a.mean_abs_difference},
                )


async def _drift(
    repo: PredictionRepository,
    spec: ModelSpec | None,
    *,
    last: int | None,
    since: datetime | None,
    until: datetime | None,
) -> Drift | None:
    """A served version's drift over the window: its counts summed by SQL, then one PSI per
    feature and for the answers (app.ml.drift). A window of the newest `last` rows is the fewest
    newest periods that hold them."""
    if spec is None or spec.reference is None:
        return None
    if last is not None:
        since = await repo.drift_start(spec.name, spec.version, last, counted=ANSWERS)
    counts: dict[int, dict[int, int]] = {}
    for feature, bin_, n in await repo.drift_sums(spec.name, spec.version, since=since, until=until):
        counts.setdefault(feature, {})[bin_] = n
    reference = spec.reference

    def shift(name: str, feature: int, histogram: Histogram) -> Shift:
        seen = counts.get(feature, {})
        value = psi(histogram.fractions, [seen.get(b, 0) for b in range(len(histogram.fractions))])
        return Shift(name, value, None if value is None else value > DRIFT_THRESHOLD)

    return Drift(
        rows=sum(counts.get(ANSWERS, {}).values()),
        since=since,
        features=[
            shift(f.name, j, h)
            for j, (f, h) in enumerate(zip(spec.features, reference.features, strict=True))
        ],
        prediction=shift("prediction", ANSWERS, reference.prediction),
    )
