"""Prediction ids: UUIDs of version 7 (RFC 9562), made by the process that answers.

A prediction's record is written by the log's writer after the answer has gone (app.services.
prediction_log), so the database cannot number it in time to put its id in the answer. A version-7
UUID is made here instead: 48 bits of Unix milliseconds, then 74 random bits, so ids sort by time
and two processes never need to agree on one. (Python 3.14's `uuid.uuid7` makes the same layout;
this project runs on 3.11.)"""

from __future__ import annotations

import os
import time
import uuid

_VERSION_7 = 0x7 << 76
_VARIANT = 0b10 << 62


def new_prediction_id(now_ms: int | None = None) -> uuid.UUID:
    """A fresh version-7 UUID (its time: `now_ms`, default now)."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    random = int.from_bytes(os.urandom(10))  # 80 bits, 74 kept
    rand_a = (random >> 62) & 0xFFF
    rand_b = random & ((1 << 62) - 1)
    return uuid.UUID(int=(ms & ((1 << 48) - 1)) << 80 | _VERSION_7 | rand_a << 64 | _VARIANT | rand_b)


def made_at(prediction_id: uuid.UUID) -> float | None:
    """When a version-7 UUID was made (Unix seconds); None for another version."""
    if prediction_id.version != 7:
        return None
    return (prediction_id.int >> 80) / 1000
