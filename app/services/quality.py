"""Live quality per model version (issue 24): what the truths sent back say of each version's
answers, summed by SQL over `prediction_feedback` (app.services.feedback scores each row as its
truth arrives), never by loading the log into memory."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from app.core.errors import ValidationFailed
from app.db.database import Database
from app.ml.manifest import ModelSpec
from app.ml.registry import ModelRegistry
from app.observability import metrics
from app.repositories.predictions import PredictionRepository

# The window of the Prometheus gauges, and of `GET /models/{name}/quality` when it names none: each
# version's newest labelled rows.
QUALITY_GAUGE_WINDOW = 1000


@dataclass(frozen=True, slots=True)
class VersionQuality:
    version: str
    labelled: int  # feedback rows behind the figures
    accuracy: float | None = None
    log_loss: float | None = None
    mae: float | None = None
    rmse: float | None = None


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
        spec: ModelSpec,
        versions: list[str],
        *,
        last: int | None,
        since: datetime | None,
        until: datetime | None,
        with_feedback: bool = True,
    ) -> list[VersionQuality]:
        """Each of `versions` (and, `with_feedback`, each other one that has feedback) over the
        window: its newest `last` labelled rows, or the rows predicted in [since, until)."""
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
            others = await repo.feedback_versions(spec.name) if with_feedback else []
            every = sorted(set(versions) | set(others))
            out = []
            for version in every:
                sums = await repo.feedback_sums(spec.name, version, last=last, since=since, until=until)
                n, n_class, correct, log_loss, n_reg, abs_sum, sq_sum = sums
                out.append(
                    VersionQuality(
                        version=version,
                        labelled=n,
                        accuracy=correct / n_class if n_class else None,
                        log_loss=log_loss / n_class if n_class else None,
                        mae=abs_sum / n_reg if n_reg else None,
                        rmse=math.sqrt(sq_sum / n_reg) if n_reg else None,
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
        """The Prometheus gauges of every model's versions, over QUALITY_GAUGE_WINDOW (at a scrape)."""
        for spec in registry.list():
            figures = await self.quality(
                spec,
                registry.versions(spec.name),
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
