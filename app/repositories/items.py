"""Queries on items. Every query takes the owner: another user's item is simply not found."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Item


class ItemRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @staticmethod
    def _scoped(owner_id: int | None) -> Select[Item]:
        query = select(Item)
        return query if owner_id is None else query.where(Item.owner_id == owner_id)

    async def get(self, item_id: int, owner_id: int | None) -> Item | None:
        """The item if `owner_id` owns it (`None`: any owner, for admins)."""
        return await self.session.scalar(self._scoped(owner_id).where(Item.id == item_id))

    async def page(self, owner_id: int | None, offset: int, limit: int) -> tuple[Sequence[Item], int]:
        count = select(func.count()).select_from(Item)
        if owner_id is not None:
            count = count.where(Item.owner_id == owner_id)
        total = await self.session.scalar(count) or 0
        rows = await self.session.scalars(
            self._scoped(owner_id).order_by(Item.id).offset(offset).limit(limit)
        )
        return rows.all(), total

    async def after(self, owner_id: int | None, after_id: int, limit: int) -> Sequence[Item]:
        """Keyset page: items with an id above `after_id`, in id order."""
        rows = await self.session.scalars(
            self._scoped(owner_id).where(Item.id > after_id).order_by(Item.id).limit(limit)
        )
        return rows.all()

    async def add(self, item: Item) -> Item:
        self.session.add(item)
        await self.session.flush()
        return item

    async def update(self, item: Item, values: dict[str, Any]) -> Item:
        for key, value in values.items():
            setattr(item, key, value)
        await self.session.flush()
        return item

    async def delete(self, item: Item) -> None:
        await self.session.delete(item)
        await self.session.flush()
