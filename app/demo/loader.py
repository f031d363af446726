"""Load the demo tenants through the same validated service functions the API uses."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.deps import Principal
from app.catalog import purposes, schemas, service, tenants
from app.catalog.models import Processor, Recipient
from app.demo.tenants import DEMO_TENANTS, POLICIES


async def load_tenant(session: AsyncSession, spec: dict) -> bool:
    """Create the tenant and its catalog unless the tenant exists; returns whether it was created."""
    tenant = spec["tenant"]
    if await tenants.get_tenant(session, tenant["id"]):
        return False
    await tenants.create_tenant(session, key=tenant["id"], name=tenant["name"], name_en=tenant.get("name_en"))
    await load_catalog(session, spec)
    return True


async def load_catalog(session: AsyncSession, spec: dict) -> None:
    """The spec's recipients, processors, purposes, notice and collection points, for an existing tenant."""
    tenant = spec["tenant"]
    principal = Principal(tenant=tenant["id"], sub="demo-loader", scopes=frozenset({"catalog:write"}))
    for recipient in spec["recipients"]:
        await service.add(session, Recipient(tenant_id=tenant["id"], **schemas.RecipientCreate(**recipient).model_dump()))
    for processor in spec["processors"]:
        await service.add(session, Processor(tenant_id=tenant["id"], **schemas.ProcessorCreate(**processor).model_dump()))
    for purpose in spec["purposes"]:
        await purposes.create_purpose(session, principal, schemas.PurposeCreate(**purpose))
    notice = spec["notice"]
    await service.create_notice(session, principal, schemas.NoticeCreate(
        key=notice["key"], version=notice["version"], title=notice["title"], language="ko",
        body=(POLICIES / notice["file"]).read_text(encoding="utf-8"),
        effective_at=datetime.fromisoformat(notice["effective_at"]), publish=True,
    ))
    for point in spec["collection_points"]:
        await service.create_collection_point(session, principal, schemas.CollectionPointCreate(**point))


async def load_demo(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    created = []
    for spec in DEMO_TENANTS:
        async with sessions() as session, session.begin():
            if await load_tenant(session, spec):
                created.append(spec["tenant"]["id"])
    return created
