"""Queries on items. Every query takes the owner: another user's item is simply not found.

Core statements, built once at import with bind parameters and run by `Statements`
(app.db.statements): a request pays neither for building nor for compiling a statement, and reads
return plain dicts, not ORM entities with their identity map and session (docs/performance.md).
Column defaults (`created_at`, `updated_at`) are the table's own, computed on every path.

THE OPTIMISATION, kept here and nowhere else: `get_as`, `page_as` and `add_as` (read one, list,
create: the hottest routes) take the caller's unverified token (`Access`) instead of a checked
caller, and fold the check of its user and login session (or API key) into their own statement:
`CALLERS` (app.repositories.users) as a subquery joined to the read, feeding the count, or feeding
`INSERT ... SELECT`. No row means the token is no longer good (`NoCaller`, answered 401 exactly as
`authenticate` answers it); otherwise one round trip did the check and the work. Measured
(bench/analysis.md, "Two round trips for every item read"; CPU per request in process,
`python -m bench.profile_hot --db postgresql`): GET item 455 -> 372 us, list 781 -> 515 us, POST
654 -> 349 us; each round trip saved is ~200 us of the app's CPU. tests/security walks every route
with a logged-out, a deactivated and a deleted user's token and expects 401 and nothing written.
A new resource does not need this: its routes take the checked caller and its repository uses the
plain methods below the line (`get`, `page`, `after`, `update`, `delete`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple, TypedDict, cast

from sqlalchemy import (
    Select,
    Subquery,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.sql.dml import ReturningInsert

from app.db.statements import Statements
from app.models import Item
from app.repositories.users import CALLERS, Access, NoCaller


class ItemRow(TypedDict):
    """An item as the API shows it."""

    id: int
    owner_id: int
    title: str
    description: str | None
    created_at: datetime
    updated_at: datetime


_items = cast(Table, Item.__table__)
_c = _items.c
_COLUMNS = (_c.id, _c.owner_id, _c.title, _c.description, _c.created_at, _c.updated_at)
_BY_ID = _c.id == bindparam("b_id")
_OWNED = _c.owner_id == bindparam("b_owner")

# `owner` None: any owner's (admins read every item).
_GET = {
    True: select(*_COLUMNS).where(_BY_ID, _OWNED),
    False: select(*_COLUMNS).where(_BY_ID),
}
_PAGE = {
    owned: select(*_COLUMNS)
    .where(*([_OWNED] if owned else []))
    .order_by(_c.id)
    .offset(bindparam("b_offset"))
    .limit(bindparam("b_limit"))
    for owned in (True, False)
}
_AFTER = {
    owned: select(*_COLUMNS)
    .where(_c.id > bindparam("b_after"), *([_OWNED] if owned else []))
    .order_by(_c.id)
    .limit(bindparam("b_limit"))
    for owned in (True, False)
}
# The column values come as execute parameters; `updated_at` is the column's `onupdate`.
_UPDATE = update(_items).where(_BY_ID, _OWNED).returning(*_COLUMNS)
_DELETE = delete(_items).where(_BY_ID, _OWNED)


# --- The optimisation (see the module's docstring): the caller check folded into the statement.


class _AsCaller(NamedTuple):
    get: Select[Any]
    total: Select[Any]
    add: ReturningInsert[Any]


def _as_caller(caller: Subquery) -> _AsCaller:
    """The hot read, the hot count and the insert, each joined with the caller check `caller`
    (app.repositories.users.CALLERS): no row means the caller's token (or key) is no longer good (a
    401); otherwise the row carries the caller and the result. Another user's item looks missing,
    unless the caller is an admin (who reads every item)."""
    who = caller.c
    get = select(who.caller_id, *_COLUMNS).select_from(
        caller.outerjoin(_items, and_(_BY_ID, or_(_c.owner_id == who.caller_id, who.caller_is_admin)))
    )
    total = select(
        who.caller_id,
        who.caller_is_admin,
        # Only the branch that applies is run: an admin counts every item, anyone else their own.
        case(
            (who.caller_is_admin, select(func.count()).select_from(_items).scalar_subquery()),
            else_=select(func.count())
            .select_from(_items)
            .where(_c.owner_id == who.caller_id)
            .scalar_subquery(),
        ).label("total"),
    ).select_from(caller)
    add = (
        insert(_items)
        .from_select(
            ["owner_id", "title", "description"],
            select(
                who.caller_id,
                bindparam("b_title", type_=_c.title.type),
                bindparam("b_description", type_=_c.description.type),
            ).select_from(caller),
            include_defaults=True,  # the timestamps: the columns' defaults, once per statement
        )
        .returning(*_COLUMNS)
    )
    return _AsCaller(get, total, add)


# By `Access.by_key`: checked by login session (False) or by API key (True).
_AS_CALLER = {by_key: _as_caller(caller) for by_key, caller in CALLERS.items()}


def _scope(owner_id: int | None, **params: Any) -> tuple[bool, dict[str, Any]]:
    if owner_id is not None:
        params["b_owner"] = owner_id
    return owner_id is not None, params


class ItemRepository:
    def __init__(self, db: Statements) -> None:
        self.db = db

    async def get_as(self, access: Access, item_id: int) -> ItemRow | None:
        """The item if the caller may read it; `NoCaller` if the token is no longer good."""
        row = await self.db.one(_AS_CALLER[access.by_key].get, {**access.params, "b_id": item_id})
        if row is None:
            raise NoCaller
        del row["caller_id"]
        return None if row["id"] is None else cast(ItemRow, row)

    async def page_as(self, access: Access, offset: int, limit: int) -> tuple[list[ItemRow], int]:
        """A page of what the caller may read and its total; `NoCaller` if the token is no longer good."""
        caller = await self.db.one(_AS_CALLER[access.by_key].total, access.params)
        if caller is None:
            raise NoCaller
        owner = None if caller["caller_is_admin"] else caller["caller_id"]
        return await self.page(owner, offset, limit), int(caller["total"])

    async def add_as(self, access: Access, values: dict[str, Any]) -> ItemRow:
        """The caller's new item; `NoCaller` (nothing written) if the token is no longer good."""
        params = {**access.params}
        params.update({f"b_{key}": value for key, value in values.items()})
        rows = await self.db.all(_AS_CALLER[access.by_key].add, params)
        if not rows:
            raise NoCaller
        return cast(ItemRow, rows[0])

    # --- The plain queries, the shape a new resource copies.

    async def get(self, item_id: int, owner_id: int | None) -> ItemRow | None:
        """The item if `owner_id` owns it (`None`: any owner, for admins)."""
        owned, params = _scope(owner_id, b_id=item_id)
        return cast(ItemRow | None, await self.db.one(_GET[owned], params))

    async def page(self, owner_id: int | None, offset: int, limit: int) -> list[ItemRow]:
        """A page of `owner_id`'s items (`None`: everyone's), in id order."""
        owned, params = _scope(owner_id, b_offset=offset, b_limit=limit)
        return cast(list[ItemRow], await self.db.all(_PAGE[owned], params))

    async def after(self, owner_id: int | None, after_id: int, limit: int) -> list[ItemRow]:
        """Keyset page: items with an id above `after_id`, in id order."""
        owned, params = _scope(owner_id, b_after=after_id, b_limit=limit)
        return cast(list[ItemRow], await self.db.all(_AFTER[owned], params))

    async def update(self, item_id: int, owner_id: int, values: dict[str, Any]) -> ItemRow | None:
        """Sets `values` (and updated_at) on the owner's item; None if there is no such item."""
        params = {**values, "b_id": item_id, "b_owner": owner_id}
        return cast(ItemRow | None, await self.db.one(_UPDATE, params))

    async def delete(self, item_id: int, owner_id: int) -> bool:
        """Whether the owner's item existed (and is now deleted)."""
        return bool(await self.db.rowcount(_DELETE, {"b_id": item_id, "b_owner": owner_id}))
