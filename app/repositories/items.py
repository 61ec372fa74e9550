"""Queries on items. Every query takes the owner: another user's item is simply not found.

Core statements, built once at import with bind parameters: a request pays neither for building a
statement nor for its cache key (SQLAlchemy memoises both on the statement object), and reads
return plain rows, not ORM entities with their identity map and session (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Table, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.models import Item

# An item as the API shows it: id, owner_id, title, description, created_at, updated_at.
ItemRow = Row[int, int, str, str | None, datetime, datetime]

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
_COUNT = {
    True: select(func.count()).select_from(_items).where(_OWNED),
    False: select(func.count()).select_from(_items),
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
# The column values come as execute parameters; created_at and updated_at get their Python-side
# defaults (and updated_at its onupdate) from the table, as with the ORM.
_INSERT = insert(_items).returning(*_COLUMNS)
_UPDATE = update(_items).where(_BY_ID, _OWNED).returning(*_COLUMNS)
_DELETE = delete(_items).where(_BY_ID, _OWNED)


def _scope(owner_id: int | None, **params: Any) -> tuple[bool, dict[str, Any]]:
    if owner_id is not None:
        params["b_owner"] = owner_id
    return owner_id is not None, params


class ItemRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def get(self, item_id: int, owner_id: int | None) -> ItemRow | None:
        """The item if `owner_id` owns it (`None`: any owner, for admins)."""
        owned, params = _scope(owner_id, b_id=item_id)
        return (await self.conn.execute(_GET[owned], params)).first()

    async def page(self, owner_id: int | None, offset: int, limit: int) -> tuple[Sequence[ItemRow], int]:
        owned, params = _scope(owner_id)
        total = (await self.conn.execute(_COUNT[owned], params)).scalar_one()
        rows = await self.conn.execute(_PAGE[owned], {**params, "b_offset": offset, "b_limit": limit})
        return rows.all(), total

    async def after(self, owner_id: int | None, after_id: int, limit: int) -> Sequence[ItemRow]:
        """Keyset page: items with an id above `after_id`, in id order."""
        owned, params = _scope(owner_id, b_after=after_id, b_limit=limit)
        return (await self.conn.execute(_AFTER[owned], params)).all()

    async def add(self, owner_id: int, values: dict[str, Any]) -> ItemRow:
        return (await self.conn.execute(_INSERT, {**values, "owner_id": owner_id})).one()

    async def update(self, item_id: int, owner_id: int, values: dict[str, Any]) -> ItemRow | None:
        """Sets `values` (and updated_at) on the owner's item; None if there is no such item."""
        params = {**values, "b_id": item_id, "b_owner": owner_id}
        return (await self.conn.execute(_UPDATE, params)).first()

    async def delete(self, item_id: int, owner_id: int) -> bool:
        """Whether the owner's item existed (and is now deleted)."""
        result = await self.conn.execute(_DELETE, {"b_id": item_id, "b_owner": owner_id})
        return bool(result.rowcount)
