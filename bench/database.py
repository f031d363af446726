"""The benchmark's own database on the embedded server: created, migrated, catalogs loaded."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from app.auth.deps import Principal
from app.catalog import service as catalog_service
from app.catalog.schemas import CollectionPointCreate
from app.cli import migrate
from app.core.db import create_engine, session_factory
from app.core.settings import Settings
from app.demo.loader import load_tenant
from app.demo.tenants import SMALLTICKET
from bench.seed import Catalog

# A form with exactly three purposes, so "recording 3 decisions" is one POST with three decisions.
POINT = "bench-3"
PURPOSES = ("membership", "marketing-sms", "marketing-email")
NOTICE = "privacy-policy"


def dsn(url: str) -> str:
    """asyncpg's spelling of a SQLAlchemy URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://")


def create(server_url: str) -> str:
    """A fresh database on the server, migrated to head; returns its SQLAlchemy URL."""
    name = f"cl_bench_{uuid.uuid4().hex[:8]}"

    async def run() -> None:
        conn = await asyncpg.connect(dsn(server_url))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(run())
    url = server_url.rsplit("/", 1)[0] + f"/{name}"
    migrate(url)
    return url


async def load_catalog(url: str, tenant: str) -> Catalog:
    """The smallticket demo catalog under `tenant`, plus the three-purpose benchmark form, through
    the same service functions the API uses."""
    engine = create_engine(url, Settings(database_url=url))
    try:
        async with session_factory(engine)() as session, session.begin():
            await load_tenant(session, {**SMALLTICKET, "tenant": {**SMALLTICKET["tenant"], "id": tenant}})
            principal = Principal(tenant=tenant, sub="bench", scopes=frozenset({"catalog:write"}))
            point, purposes = await catalog_service.create_collection_point(session, principal, CollectionPointCreate(
                key=POINT, name="벤치마크 가입", kind="signup", notice_key=NOTICE, purposes=list(PURPOSES)))
            notice = await catalog_service.current_notice(session, tenant, NOTICE)
            return Catalog(tenant=tenant, collection_point_id=point.id, notice_id=notice.id,
                           purposes=tuple((p.id, p.disclosure_hash) for p in purposes))
    finally:
        await engine.dispose()
