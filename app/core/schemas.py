"""Small shared schema pieces."""

from __future__ import annotations

from typing import Annotated

from datetime import UTC

from pydantic import AfterValidator, AwareDatetime, StringConstraints

Key = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$"),
]
"""Tenant-chosen identifier for catalog entries: lowercase, digits, `.`, `_`, `-`; 1-64 chars."""

Text200 = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
Text2000 = Annotated[str, StringConstraints(min_length=1, max_length=2000, strip_whitespace=True)]
Url = Annotated[str, StringConstraints(min_length=1, max_length=2048, strip_whitespace=True)]

UtcDatetime = Annotated[AwareDatetime, AfterValidator(lambda value: value.astimezone(UTC))]
"""An input time: it must carry an offset (a naive time is refused, never guessed); kept in UTC."""
