"""/api/v1/predictions: the prediction log, read back by its users (and admins)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from app.api.deps import (
    CursorQuery,
    FeedbackServiceDep,
    FeedbackWriter,
    PageLimit,
    PredictionHistoryDep,
    PredictionReader,
)
from app.api.v1 import PREFIX
from app.core.errors import PROBLEM_TYPE_BASE
from app.schemas.common import AUTHENTICATED_ERRORS, JSON_BODY_ERRORS, problem_responses
from app.schemas.prediction import (
    BulkFeedbackCreate,
    BulkFeedbackResult,
    FeedbackCreate,
    FeedbackPublic,
    FeedbackRefused,
    PredictionRecordPage,
    RowFeedback,
)
from app.services.feedback import Scored

router = APIRouter(
    prefix=f"{PREFIX}/predictions",
    tags=["predictions"],
    responses=problem_responses(*AUTHENTICATED_ERRORS),
)


@router.get(
    "", summary="The caller's prediction records, newest first", responses=problem_responses(403, 422)
)
async def list_predictions(
    user: PredictionReader,
    history: PredictionHistoryDep,
    cursor: CursorQuery = None,
    limit: PageLimit = 20,
    user_id: Annotated[
        int | None,
        Query(ge=1, le=2**31 - 1, description="Admins: another user's records (default: the caller's)."),
    ] = None,
) -> PredictionRecordPage:
    """Records are written in batches shortly after each prediction, so the newest may take a
    moment to appear."""
    rows, next_cursor = await history.page(user, user_filter=user_id, cursor=cursor, limit=limit)
    return PredictionRecordPage.model_validate({"items": rows, "next_cursor": next_cursor})


def _public(scored: Scored) -> FeedbackPublic:
    return FeedbackPublic(
        prediction_id=scored.prediction_id,
        model=scored.model,
        version=scored.version,
        rows=[RowFeedback.model_validate(row, from_attributes=True) for row in scored.rows],
    )


@router.post(
    "/feedback",
    summary="Send the truth for many predictions",
    responses=problem_responses(*JSON_BODY_ERRORS),
)
async def send_feedback_many(
    body: BulkFeedbackCreate, caller: FeedbackWriter, feedback: FeedbackServiceDep
) -> BulkFeedbackResult:
    """Up to 1,000 predictions' truths (a day's outcomes) in one transaction: each is recorded or
    refused as the single form would be, and the refused ones are named by their place in `items`
    with that problem's status, type and detail."""
    recorded, refused = await feedback.record_many(
        caller, [(item.prediction_id, item.truth) for item in body.items]
    )
    return BulkFeedbackResult(
        recorded=[_public(s) for s in recorded],
        refused=[
            FeedbackRefused(
                index=r.index,
                prediction_id=r.prediction_id,
                status=r.error.status,
                type=PROBLEM_TYPE_BASE + r.error.code,
                detail=r.error.detail,
                errors=r.error.errors,
            )
            for r in refused
        ],
    )


@router.post(
    "/{prediction_id}/feedback",
    status_code=status.HTTP_201_CREATED,
    summary="Send the truth for a prediction",
    responses=problem_responses(404, 409, *JSON_BODY_ERRORS),
)
async def send_feedback(
    body: FeedbackCreate,
    caller: FeedbackWriter,
    feedback: FeedbackServiceDep,
    prediction_id: Annotated[uuid.UUID, Path(description="The `prediction_id` of the answer.")],
) -> FeedbackPublic:
    """The true label (classifiers) or value (regressors) of each row the prediction answered, once,
    by the prediction's owner (a key needs `feedback:write`). The answer scores each row: whether
    the label was right and its log loss, or the absolute error; live quality per version sums
    these. A truth sent within moments of the answer may find the record not written yet: 409
    `prediction-not-recorded-yet` with Retry-After. Also 409: the truth was sent already, the
    prediction failed, or its version is no longer loaded; 422 naming `truth.N`: a label the model
    does not have, a number for a classifier or a label for a regressor."""
    return _public(await feedback.record(caller, prediction_id, body.truth))
