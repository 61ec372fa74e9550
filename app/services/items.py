"""Item logic shared by /api/v1 (offset pages) and /api/v2 (cursor pages)."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.exceptions import NotFound, ValidationFailed
from app.models import Item, User
from app.repositories.items import ItemRepository


class ItemNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("Item not found.")


class InvalidCursor(ValidationFailed):
    def __init__(self) -> None:
        super().__init__(
            "The cursor is not one this API returned.",
            errors=[{"field": "cursor", "message": "Invalid cursor"}],
        )


# Item ids are 32-bit integers on every backend.
MAX_ITEM_ID = 2**31 - 1
_CURSOR_RE = re.compile(r"i:(0|[1-9][0-9]{0,9})")


@dataclass(frozen=True, slots=True)
class CursorPage:
    items: Sequence[Item]
    next_cursor: str | None


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"i:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The last id of the previous page. Only what `encode_cursor` makes is accepted: a forged id
    out of the column's range would otherwise reach the database and fail there (a 500)."""
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except ValueError as exc:  # binascii.Error and UnicodeDecodeError included
        raise InvalidCursor from exc
    match = _CURSOR_RE.fullmatch(raw)
    if match is None or int(match[1]) > MAX_ITEM_ID:
        raise InvalidCursor
    return int(match[1])


class ItemService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.items = ItemRepository(session)

    @staticmethod
    def _scope(user: User) -> int | None:
        """Admins read every item; everyone else only their own."""
        return None if user.is_admin else user.id

    async def get(self, user: User, item_id: int) -> Item:
        item = await self.items.get(item_id, self._scope(user))
        if item is None:
            raise ItemNotFound
        return item

    async def get_owned(self, user: User, item_id: int) -> Item:
        """For writes: only the owner may change or delete an item, admins included."""
        item = await self.items.get(item_id, user.id)
        if item is None:
            raise ItemNotFound
        return item

    async def page(self, user: User, offset: int, limit: int) -> tuple[Sequence[Item], int]:
        return await self.items.page(self._scope(user), offset, limit)

    async def cursor_page(self, user: User, cursor: str | None, limit: int) -> CursorPage:
        after = decode_cursor(cursor) if cursor else 0
        # One extra row tells whether another page exists without a count query.
        rows = await self.items.after(self._scope(user), after, limit + 1)
        has_more = len(rows) > limit
        rows = rows[:limit]
        return CursorPage(rows, encode_cursor(rows[-1].id) if has_more and rows else None)

    async def create(self, user: User, values: dict[str, Any]) -> Item:
        item = await self.items.add(Item(owner_id=user.id, **values))
        await self.session.commit()
        return item

    async def update(self, user: User, item_id: int, values: dict[str, Any]) -> Item:
        item = await self.get_owned(user, item_id)
        await self.items.update(item, values)
        await self.session.commit()
        return item

    async def delete(self, user: User, item_id: int) -> None:
        item = await self.get_owned(user, item_id)
        await self.items.delete(item)
        await self.session.commit()
