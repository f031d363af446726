"""Tenants: created deliberately (CLI, demo loader, tests), and checked on every authenticated call.

A token is signed by an identity provider that knows nothing of this database; a tenant claim
that names no `tenants` row would otherwise write catalog and consent rows for a controller that
does not exist. Keys are compared exactly: `SmallTicket` is not `smallticket`.
"""

from __future__ import annotations

import re
import time

import asyncpg
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.catalog.models import Tenant
from app.core.errors import Conflict, InvalidRequest

TENANT_KEY = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
TENANT_KEY_RULE = "1-63 characters: lowercase letters, digits and '-', starting and ending with a letter or digit"


async def create_tenant(session: AsyncSession, *, key: str, name: str, name_en: str | None = None) -> Tenant:
    """The one way a tenant comes to exist; flushes, the caller commits."""
    problems = []
    if not TENANT_KEY.fullmatch(key):
        problems.append({"field": "key", "reason": TENANT_KEY_RULE})
    if not name.strip():
        problems.append({"field": "name", "reason": "must not be empty"})
    if name_en is not None and not name_en.strip():
        problems.append({"field": "name_en", "reason": "must not be empty when given"})
    if problems:
        raise InvalidRequest("the tenant is not valid", errors=problems)
    tenant = Tenant(id=key, name=name.strip(), name_en=name_en.strip() if name_en else None)
    try:
        async with session.begin_nested():
            session.add(tenant)
            await session.flush()
    except IntegrityError as exc:
        raise Conflict(f"a tenant with key {key!r} already exists",
                       errors=[{"field": "key", "reason": "already exists"}]) from exc
    return tenant


async def get_tenant(session: AsyncSession, key: str) -> Tenant | None:
    return await session.scalar(select(Tenant).where(Tenant.id == key))


async def list_tenants(session: AsyncSession) -> list[Tenant]:
    return list(await session.scalars(select(Tenant).order_by(Tenant.id)))


class KnownTenants:
    """Per-process memory of tenants seen to exist, so the hot read path pays no query per request.

    Only positive answers are remembered (for `ttl` seconds): a tenant created a moment ago works
    at once, and a refused claim is looked up again on every request.
    """

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._until: dict[str, float] = {}

    async def contains(self, pool: asyncpg.Pool, key: str) -> bool:
        now = time.monotonic()
        until = self._until.get(key)
        if until is not None and until > now:
            return True
        exists = await pool.fetchval("SELECT true FROM tenants WHERE id = $1", key)
        if exists:
            self._until[key] = now + self._ttl
        else:
            self._until.pop(key, None)
        return bool(exists)
