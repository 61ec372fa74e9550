"""Pagination every list shares: the opaque cursor of keyset pages (`/api/v2` items, the
prediction history) and the page it comes with. A new list imports these; it writes no codec."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from app.core.errors import ValidationFailed

T = TypeVar("T")

# Integer ids are 32-bit on every backend: a cursor past that is not one this API made.
MAX_ID = 2**31 - 1
_CURSOR_RE = re.compile(r"i:(0|[1-9][0-9]{0,9})")


class InvalidCursor(ValidationFailed):
    def __init__(self) -> None:
        super().__init__(
            "The cursor is not one this API returned.",
            errors=[{"field": "cursor", "message": "Invalid cursor"}],
        )


@dataclass(frozen=True, slots=True)
class CursorPage(Generic[T]):
    """A keyset page: its rows and the cursor of the next page (None: this is the last)."""

    items: Sequence[T]
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
    if match is None or int(match[1]) > MAX_ID:
        raise InvalidCursor
    return int(match[1])


def keyset_page(rows: Sequence[T], limit: int, key: Callable[[T], int]) -> CursorPage[T]:
    """The page of a query that asked for `limit + 1` rows in key order (the extra row only says
    that another page exists, without a count query); `key` gives a row's id."""
    page = rows[:limit]
    more = len(rows) > limit and bool(page)
    return CursorPage(page, encode_cursor(key(page[-1])) if more else None)
