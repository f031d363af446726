"""Opaque keyset cursors: the last row's sort key, base64url-encoded, never an OFFSET."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TypeVar

from app.core.errors import InvalidRequest

T = TypeVar("T")


def encode_cursor(*parts: object) -> str:
    return base64.urlsafe_b64encode("|".join(map(str, parts)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, parse: Callable[[list[str]], T]) -> T:
    """`parse` turns the cursor's parts back into the sort key; any failure is the caller's 422."""
    try:
        parts = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|")
        return parse(parts)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest("the cursor is not valid", errors=[
            {"field": "query.cursor", "reason": "use the next_cursor of a previous page"}]) from exc
