"""/api/v2/items: the same items as v1, with cursor pagination that is stable under inserts."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import CursorQuery, ItemReader, ItemServiceDep, PageLimit
from app.api.v2 import PREFIX
from app.schemas.common import AUTHENTICATED_ERRORS, problem_responses
from app.schemas.item import ItemPage

router = APIRouter(
    prefix=f"{PREFIX}/items", tags=["items v2"], responses=problem_responses(*AUTHENTICATED_ERRORS)
)


@router.get("", summary="List the caller's items (cursor pages)", responses=problem_responses(422))
async def list_items(
    caller: ItemReader,
    items: ItemServiceDep,
    cursor: CursorQuery = None,
    limit: PageLimit = 20,
) -> ItemPage:
    """Pages follow item ids, so an item created while a client pages never shifts or repeats a page."""
    page = await items.cursor_page(caller, cursor, limit)
    return ItemPage.model_validate({"items": page.items, "next_cursor": page.next_cursor})
