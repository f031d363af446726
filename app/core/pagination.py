"""Opaque keyset cursors: the last row's sort key, base64url-encoded, never an OFFSET."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from app.core.errors import InvalidRequest
from app.core.schemas import to_utc

T = TypeVar("T")

INT64_MAX = 2**63 - 1


def encode_cursor(*parts: object) -> str:
    return base64.urlsafe_b64encode("|".join(map(str, parts)).encode()).decode().rstrip("=")


def _check(value: object) -> None:
    """A forged cursor may parse into values the database cannot take: refuse them here."""
    if isinstance(value, tuple):
        for item in value:
            _check(item)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not -INT64_MAX - 1 <= value <= INT64_MAX:
            raise ValueError("integer out of range")
    elif isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("a cursor's time carries its offset")
        to_utc(value)


def decode_cursor(cursor: str, parse: Callable[[list[str]], T]) -> T:
    """`parse` turns the cursor's parts back into the sort key; any failure is the caller's 422."""
    try:
        parts = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|")
        value = parse(parts)
        _check(value)
        return value
    except (ValueError, UnicodeDecodeError, OverflowError) as exc:
        raise InvalidRequest("the cursor is not valid", errors=[
            {"field": "query.cursor", "reason": "use the next_cursor of a previous page"}]) from exc
