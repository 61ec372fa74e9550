"""/api/v1/predictions: the prediction log, read back by its users (and admins)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import CursorQuery, PageLimit, PredictionHistoryDep, PredictionReader
from app.api.v1 import PREFIX
from app.schemas.common import AUTHENTICATED_ERRORS, problem_responses
from app.schemas.prediction import PredictionRecordPage

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
