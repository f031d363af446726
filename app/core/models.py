"""Shared column helpers for SQLModel tables."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, DateTime, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlmodel import Field, SQLModel

from app.core.db import apply_naming_convention

apply_naming_convention(SQLModel.metadata)


def utcnow() -> datetime:
    return datetime.now(UTC)


def uuid_pk() -> Any:
    return Field(
        default_factory=uuid.uuid4,
        sa_column=Column(UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    )


def timestamp(*, index: bool = False) -> Any:
    """A required timezone-aware UTC timestamp defaulting to now."""
    return Field(
        default_factory=utcnow,
        sa_column=Column(DateTime(timezone=True), nullable=False, index=index, server_default=text("now()")),
    )


def optional_timestamp() -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))


def jsonb_object() -> Any:
    """A required JSONB column holding an object, `{}` by default."""
    return Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))


def sql_in(column: str, values: tuple[str, ...]) -> str:
    """SQL text for a CHECK constraint limiting a text column to `values`."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"
