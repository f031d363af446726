"""Small shared schema pieces."""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

Key = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$"),
]
"""Tenant-chosen identifier for catalog entries: lowercase, digits, `.`, `_`, `-`; 1-64 chars."""

Text200 = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
Text2000 = Annotated[str, StringConstraints(min_length=1, max_length=2000, strip_whitespace=True)]
