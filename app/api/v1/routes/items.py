"""/api/v1/items: the caller's items, offset-paginated.

Every route takes the caller (`ItemReader`, `ItemWriter`: a user, through a login session or a key
with the scope) and hands it to the item service, which checks it against the database itself."""

from __future__ import annotations

from fastapi import APIRouter, Path, Response, status
from pydantic import TypeAdapter

from app.api.deps import ItemReader, ItemServiceDep, ItemWriter, OffsetPageDep
from app.api.v1 import PREFIX
from app.schemas.common import AUTHENTICATED_ERRORS, JSON_BODY_ERRORS, problem_responses
from app.schemas.item import ItemCreate, ItemPublic, ItemUpdate

router = APIRouter(
    prefix=f"{PREFIX}/items", tags=["items"], responses=problem_responses(*AUTHENTICATED_ERRORS)
)

ItemId = Path(ge=1, le=2**31 - 1, description="The item's id.")
# A page's rows validated in one call (not one `model_validate` per row).
ItemList = TypeAdapter(list[ItemPublic])


@router.get(
    "",
    summary="List the caller's items",
    responses={
        **problem_responses(422),
        200: {
            "headers": {
                "X-Total-Count": {"description": "Items in all pages.", "schema": {"type": "integer"}}
            }
        },
    },
)
async def list_items(
    caller: ItemReader, items: ItemServiceDep, page: OffsetPageDep, response: Response
) -> list[ItemPublic]:
    """The caller's items in creation order (every item, for admins). Total in `X-Total-Count`."""
    rows, total = await items.page(caller, page.offset, page.limit)
    response.headers["X-Total-Count"] = str(total)
    return ItemList.validate_python(rows)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create an item",
    responses=problem_responses(*JSON_BODY_ERRORS),
)
async def create_item(body: ItemCreate, caller: ItemWriter, items: ItemServiceDep) -> ItemPublic:
    """The caller owns the new item; an `owner_id` in the body is refused."""
    return ItemPublic.model_validate(await items.create(caller, body.model_dump()))


@router.get("/{item_id}", summary="Read an item", responses=problem_responses(404, 422))
async def read_item(caller: ItemReader, items: ItemServiceDep, item_id: int = ItemId) -> ItemPublic:
    """Another user's item is a 404, the same as a missing one."""
    return ItemPublic.model_validate(await items.get(caller, item_id))


@router.patch("/{item_id}", summary="Update an item", responses=problem_responses(404, *JSON_BODY_ERRORS))
async def update_item(
    body: ItemUpdate, caller: ItemWriter, items: ItemServiceDep, item_id: int = ItemId
) -> ItemPublic:
    return ItemPublic.model_validate(await items.update(caller, item_id, body.model_dump(exclude_unset=True)))


@router.delete(
    "/{item_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,  # no body: no Content-Type either
    summary="Delete an item",
    responses=problem_responses(404, 422),
)
async def delete_item(caller: ItemWriter, items: ItemServiceDep, item_id: int = ItemId) -> None:
    await items.delete(caller, item_id)
