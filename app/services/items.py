"""Item logic shared by /api/v1 (offset pages) and /api/v2 (cursor pages)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.core.errors import NotFound
from app.core.security import Principal
from app.db.database import Database
from app.repositories.items import ItemRepository, ItemRow
from app.repositories.users import Access, NoCaller
from app.services.auth import authenticate
from app.services.pagination import CursorPage, decode_cursor, keyset_page


class ItemNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("Item not found.")


class ItemService:
    """Each operation takes a pooled connection for itself (`autocommit`: one round trip per
    statement, no session); an update's read and write share one transaction.

    Every operation takes the caller (`Principal`) unchecked and checks it against the database
    itself: the three hottest (read one, list, create) in their own statement (app.repositories.items),
    so the check and the work cost one round trip, the others first (`authenticate`). Credentials
    no longer good are refused (401) the same way either way."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def _scope(user: Principal) -> int | None:
        """Admins read every item; everyone else only their own."""
        return None if user.is_admin else user.id

    async def get(self, caller: Principal, item_id: int) -> ItemRow:
        access = Access(caller)
        try:
            async with self.db.statements() as statements:
                item = await ItemRepository(statements).get_as(access, item_id)
        except NoCaller:
            raise access.refusal() from None
        if item is None:
            raise ItemNotFound
        return item

    async def page(self, caller: Principal, offset: int, limit: int) -> tuple[Sequence[ItemRow], int]:
        access = Access(caller)
        try:
            async with self.db.statements() as statements:
                return await ItemRepository(statements).page_as(access, offset, limit)
        except NoCaller:
            raise access.refusal() from None

    async def cursor_page(self, caller: Principal, cursor: str | None, limit: int) -> CursorPage[ItemRow]:
        user = await authenticate(self.db, caller)
        after = decode_cursor(cursor) if cursor else 0
        async with self.db.statements() as statements:
            rows = await ItemRepository(statements).after(self._scope(user), after, limit + 1)
        return keyset_page(rows, limit, lambda row: row["id"])

    async def create(self, caller: Principal, values: dict[str, Any]) -> ItemRow:
        # One INSERT: committed (on its own) before the response is built.
        access = Access(caller)
        try:
            async with self.db.statements(write=True) as statements:
                return await ItemRepository(statements).add_as(access, values)
        except NoCaller:
            raise access.refusal() from None

    async def update(self, caller: Principal, item_id: int, values: dict[str, Any]) -> ItemRow:
        """Only the owner may change an item, admins included. Fields sent with the value they
        already have change nothing, and an update that changes nothing leaves `updated_at` alone."""
        user = await authenticate(self.db, caller)
        async with self.db.transaction() as statements:  # committed at the end of the block
            items = ItemRepository(statements)
            item = await items.get(item_id, user.id)
            if item is None:
                raise ItemNotFound
            changed = {key: value for key, value in values.items() if item.get(key) != value}
            if not changed:
                return item
            updated = await items.update(item_id, user.id, changed)
        if updated is None:  # deleted in between
            raise ItemNotFound
        return updated

    async def delete(self, caller: Principal, item_id: int) -> None:
        """Only the owner may delete an item, admins included."""
        user = await authenticate(self.db, caller)
        async with self.db.statements(write=True) as statements:
            deleted = await ItemRepository(statements).delete(item_id, user.id)
        if not deleted:
            raise ItemNotFound
