"""Small shared schema pieces."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, StringConstraints

Key = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$"),
]
"""Tenant-chosen identifier for catalog entries: lowercase, digits, `.`, `_`, `-`; 1-64 chars."""

Text200 = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
Text2000 = Annotated[str, StringConstraints(min_length=1, max_length=2000, strip_whitespace=True)]
Url = Annotated[str, StringConstraints(min_length=1, max_length=2048, strip_whitespace=True)]


_FIRST, _LAST = datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 30, tzinfo=UTC)


def to_utc(value: datetime) -> datetime:
    """`value` in UTC; an instant whose UTC date leaves years 1-9999, or comes within a day of either
    end, is a ValueError (a 422): Python cannot represent it, or the rules could not (shown in Korean
    time, a day or a period added), and PostgreSQL would only be reached with an overflow."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not _FIRST <= utc <= _LAST:
        raise ValueError("the instant is outside the supported range (2 January of year 1 to 30 December 9999, UTC)")
    return utc


def _text_only(value: object) -> object:
    """Pydantic reads a number (or a string of digits) as Unix time: `as_of=-1` would be 1969. An
    instant on this API is ISO 8601 text with an offset, nothing else."""
    if isinstance(value, (int, float)) or (isinstance(value, str) and _NUMBER.fullmatch(value.strip())):
        raise ValueError("must be an ISO 8601 date-time with an offset, e.g. 2026-03-01T09:00:00+09:00")
    return value


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")

UtcDatetime = Annotated[AwareDatetime, BeforeValidator(_text_only), AfterValidator(to_utc)]
"""An input time: ISO 8601 text with an offset (a naive time is refused, never guessed, and so is a
bare number); kept in UTC."""

EARLIEST_EVENT = datetime(2000, 1, 1, tzinfo=UTC)


def _not_before_2000(value: datetime) -> datetime:
    if value < EARLIEST_EVENT:
        raise ValueError("must not be before 2000-01-01T00:00:00Z")
    return value


EventTime = Annotated[UtcDatetime, AfterValidator(_not_before_2000)]
"""When a person acted, by the client's clock: a UtcDatetime from 2000 on. (The upper bound is the
server clock plus a small skew, checked under the subject lock: see consents/service.py.)"""
