"""Ground truth: the true label or value for a prediction, sent once by its owner some time after the
answer, scored against what the model answered when it arrives (issue 24).

A prediction's record reaches the database from the log's writer shortly after the answer (within
PREDICTION_LOG_FLUSH_MS), so a truth sent at once may find no record yet: while the id's own time
(app.core.ids) is that recent, the answer is a 409 with Retry-After rather than a 404.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from app.core.errors import AppError, Conflict, NotFound, ValidationFailed
from app.core.ids import made_at
from app.core.security import Principal
from app.db.database import Database
from app.ml import errors as ml
from app.ml.fleet import VersionNotFound
from app.ml.manifest import ModelSpec
from app.ml.registry import ModelRegistry
from app.models import PredictionRecord
from app.models.base import utcnow
from app.repositories.predictions import PredictionRepository

# A probability of 0 answered for the truth would make its log loss infinite: clipped, as
# scikit-learn's log_loss clips (to the float's epsilon there; 1e-15 here, ln = 34.5).
_SMALLEST_PROBABILITY = 1e-15
# How long after its id was made a prediction may still be on its way to the database (the log's
# flush interval, its write, and a margin for clocks and a busy writer).
_IN_FLIGHT_MARGIN_S = 5.0


class PredictionNotRecordedYet(Conflict):
    code = "prediction-not-recorded-yet"


class FeedbackExists(Conflict):
    code = "feedback-exists"


class PredictionFailed(Conflict):
    code = "prediction-has-no-outputs"


class ModelVersionGone(Conflict):
    code = "model-version-gone"


@dataclass(frozen=True, slots=True)
class ScoredRow:
    row: int
    truth: str | float
    prediction: str | float
    correct: bool | None = None
    log_loss: float | None = None
    abs_error: float | None = None


@dataclass(frozen=True, slots=True)
class Scored:
    prediction_id: uuid.UUID
    model: str
    version: str
    rows: list[ScoredRow]


@dataclass(frozen=True, slots=True)
class Refused:
    index: int
    prediction_id: uuid.UUID
    error: AppError


class FeedbackService:
    def __init__(self, db: Database, registry: ModelRegistry, flush_interval_s: float) -> None:
        self.db = db
        self.registry = registry
        self.in_flight_s = flush_interval_s + _IN_FLIGHT_MARGIN_S

    async def record(self, caller: Principal, prediction_id: uuid.UUID, truth: Sequence[Any]) -> Scored:
        """The truth for each row of the caller's prediction, once."""
        async with self.db.session() as session:
            scored = await self._record(PredictionRepository(session), caller, prediction_id, truth)
            try:
                await session.commit()
            except IntegrityError:  # the same truth sent twice at once: one of them lands
                raise self._exists(prediction_id) from None
        return scored

    async def record_many(
        self, caller: Principal, items: Sequence[tuple[uuid.UUID, Sequence[Any]]]
    ) -> tuple[list[Scored], list[Refused]]:
        """Each item as `record` would take it, in one transaction: the ones refused are named (by
        index, with the problem the single form gives) and the others recorded."""
        recorded: list[Scored] = []
        refused: list[Refused] = []
        async with self.db.session() as session:
            repo = PredictionRepository(session)
            for index, (prediction_id, truth) in enumerate(items):
                try:
                    async with session.begin_nested():
                        recorded.append(await self._record(repo, caller, prediction_id, truth))
                except AppError as exc:
                    refused.append(Refused(index, prediction_id, exc))
                except IntegrityError:  # sent twice in this form, or at once elsewhere
                    refused.append(Refused(index, prediction_id, self._exists(prediction_id)))
            await session.commit()
        return recorded, refused

    async def _record(
        self, repo: PredictionRepository, caller: Principal, prediction_id: uuid.UUID, truth: Sequence[Any]
    ) -> Scored:
        record = await repo.by_prediction_id(prediction_id)
        if record is None or record.user_id != caller.id:
            made = made_at(prediction_id)
            if record is None and made is not None and time.time() - made < self.in_flight_s:
                raise PredictionNotRecordedYet(
                    f"Prediction {prediction_id} is not recorded yet (records are written shortly "
                    "after the answer); retry in a second.",
                    headers={"Retry-After": "1"},
                )
            raise NotFound(f"No prediction {prediction_id} of yours.")
        if record.outcome != "ok" or record.outputs is None:
            raise PredictionFailed(
                f"Prediction {prediction_id} failed ({record.outcome}): there is no answer to compare."
            )
        if await repo.has_feedback(record.id):
            raise self._exists(prediction_id)
        if len(truth) != record.rows:
            raise ValidationFailed(
                f"truth: {len(truth)} sent; prediction {prediction_id} has {record.rows} rows, "
                "one truth each.",
                errors=[{"field": "truth", "message": f"{record.rows} values, one per row"}],
            )
        spec = self._spec(record)
        rows = [self._score(spec, record.outputs[i], i, value) for i, value in enumerate(truth)]
        kept = _feedback_rows(record, record.version, rows)
        # The same truth scores each shadow's answer to this request, where one was recorded
        # (its version still loaded, and taking these labels): live quality per shadow.
        for shadow in await repo.shadows_of(prediction_id):
            try:
                shadow_spec = self.registry.get(record.model, shadow.shadow_version)
                scored = [
                    self._score(shadow_spec, shadow.outputs[i], i, value) for i, value in enumerate(truth)
                ]
            except (ml.ModelError, VersionNotFound, ValidationFailed, IndexError):
                continue
            kept += _feedback_rows(record, shadow.shadow_version, scored)
        await repo.add_feedback(kept)
        return Scored(prediction_id, record.model, record.version, rows)

    def _spec(self, record: PredictionRecord) -> ModelSpec:
        try:
            return self.registry.get(record.model, record.version)
        except (ml.ModelNotFound, VersionNotFound, ml.ModelsNotReady):
            raise ModelVersionGone(
                f"Model {record.model!r} version {record.version!r} is no longer loaded here: its "
                "labels and task are unknown, so the truth cannot be checked."
            ) from None

    @staticmethod
    def _score(spec: ModelSpec, answered: Any, row: int, truth: Any) -> ScoredRow:
        field = f"truth.{row}"
        if spec.task == "regression":
            if isinstance(truth, str) or not math.isfinite(truth):
                raise _invalid(field, f"a finite number: model {spec.name!r} is a regressor")
            value = float(truth)
            return ScoredRow(row, value, float(answered), abs_error=abs(float(answered) - value))
        if not isinstance(truth, str):
            raise _invalid(field, f"a label (a string): model {spec.name!r} is a classifier")
        if truth not in spec.labels:
            raise _invalid(field, f"unknown label {truth!r}; one of: {', '.join(spec.labels)}")
        probabilities = [float(p) for p in answered]
        best = max(range(len(probabilities)), key=probabilities.__getitem__)  # the first highest
        p_truth = probabilities[spec.labels.index(truth)]
        return ScoredRow(
            row,
            truth,
            spec.labels[best],
            correct=spec.labels[best] == truth,
            log_loss=-math.log(max(p_truth, _SMALLEST_PROBABILITY)),
        )

    @staticmethod
    def _exists(prediction_id: uuid.UUID) -> FeedbackExists:
        return FeedbackExists(
            f"The truth for prediction {prediction_id} was sent already; it is kept as sent."
        )


def _feedback_rows(record: PredictionRecord, version: str, rows: list[ScoredRow]) -> list[dict[str, Any]]:
    now = utcnow()
    return [
        {
            "record_id": record.id,
            "user_id": record.user_id,
            "model": record.model,
            "version": version,
            "row": r.row,
            "label": r.truth if isinstance(r.truth, str) else None,
            "correct": None if r.correct is None else int(r.correct),
            "log_loss": r.log_loss,
            "value": None if isinstance(r.truth, str) else r.truth,
            "abs_error": r.abs_error,
            "predicted_at": record.created_at,
            "created_at": now,
        }
        for r in rows
    ]


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", errors=[{"field": field, "message": message}])
