"""Catalog storage helpers: every lookup is scoped to the caller's tenant."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.deps import Principal
from app.catalog.models import CollectionPoint, Notice, Processor, Purpose, Recipient
from app.core.errors import Conflict, NotFound

T = TypeVar("T", Recipient, Processor, Purpose, CollectionPoint, Notice)
LABELS = {
    Recipient: "recipient", Processor: "processor", Purpose: "purpose",
    CollectionPoint: "collection point", Notice: "notice",
}


def now() -> datetime:
    return datetime.now(UTC)


async def get_by_key(session: AsyncSession, principal: Principal, model: type[T], key: str) -> T:
    row = await session.scalar(select(model).where(model.tenant_id == principal.tenant, model.key == key))
    if row is None:
        raise NotFound(f"no {LABELS[model]} with key {key!r}")
    return row


async def list_all(session: AsyncSession, principal: Principal, model: type[T]) -> list[T]:
    return list(await session.scalars(select(model).where(model.tenant_id == principal.tenant).order_by(model.key)))


async def add(session: AsyncSession, row: T, *, duplicate: Conflict | None = None) -> T:
    """Insert and flush, turning a duplicate key into a 409 (`duplicate`, or one about the key)."""
    try:
        async with session.begin_nested():
            session.add(row)
            await session.flush()
    except IntegrityError as exc:
        raise duplicate or Conflict(f"a {LABELS[type(row)]} with key {row.key!r} already exists",
                                    errors=[{"field": "body.key", "reason": "already exists"}]) from exc
    return row


async def remove(session: AsyncSession, row: T) -> None:
    try:
        async with session.begin_nested():
            await session.delete(row)
            await session.flush()
    except IntegrityError as exc:
        raise Conflict(f"the {LABELS[type(row)]} {row.key!r} is referenced by other records; "
                       "it stays for the history that points to it") from exc


def apply(row: Any, changes: dict[str, Any]) -> None:
    for name, value in changes.items():
        setattr(row, name, value)
    if hasattr(row, "updated_at"):
        row.updated_at = now()
