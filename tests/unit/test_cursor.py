"""The shared cursor codec (app.services.pagination): only cursors the API made are accepted."""

from __future__ import annotations

import base64

import pytest

from app.services.pagination import MAX_ID, InvalidCursor, decode_cursor, encode_cursor


@pytest.mark.parametrize("last_id", [0, 1, 9, 10, 12345, MAX_ID])
def test_round_trip(last_id: int) -> None:
    cursor = encode_cursor(last_id)
    assert "=" not in cursor
    assert decode_cursor(cursor) == last_id


def test_cursors_are_opaque_url_safe_text() -> None:
    cursor = encode_cursor(MAX_ID)
    assert cursor.isascii()
    assert not set(cursor) & set("+/=&?# ")
    assert len(cursor) <= 64


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!!",
        "a",
        _b64(b"i:"),
        _b64(b"j:5"),
        _b64(b"5"),
        _b64(b"i:-1"),
        _b64(b"i:+1"),
        _b64(b"i: 1"),
        _b64(b"i:1 "),
        _b64(b"i:1_0"),
        _b64(b"i:01"),
        _b64(b"i:1.0"),
        _b64(b"i:\xd9\xa1"),  # an Arabic-Indic digit: int() would take it
        _b64(f"i:{MAX_ID + 1}".encode()),
        _b64(b"i:" + b"9" * 40),
        _b64(b"\xff\xfe\xfd"),
        encode_cursor(5) + "!",
        "é",
        "aW\u00e9",
    ],
)
def test_invalid_cursors(cursor: str) -> None:
    with pytest.raises(InvalidCursor) as caught:
        decode_cursor(cursor)
    assert caught.value.status == 422
    assert caught.value.errors == [{"field": "cursor", "message": "Invalid cursor"}]
