"""The benchmark's own database on the embedded server: created (owned by the owner role), migrated
(as the owner), catalogs loaded; the service under test runs as the runtime role (servers.start)."""

from __future__ import annotations

import asyncio
import secrets
import uuid

from app.auth.deps import Principal
from app.catalog import service as catalog_service
from app.catalog.schemas import CollectionPointCreate
from app.cli import migrate
from app.core import roles
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


# The superuser URL create() returned -> the runtime role's URL on the same database (servers.start
# serves the project with it).
RUNTIME_URLS: dict[str, str] = {}
PASSWORDS: dict[str, str] = {}


def create(server_url: str) -> str:
    """A fresh database on the server (a superuser's URL), owned by the owner role and migrated to head
    as that role (both roles made if missing, with passwords fresh for the run: the bench's cluster is its own).
    Returns the superuser's SQLAlchemy URL on it, for seeding and statistics; runtime_url() has the
    API's."""
    name = f"cl_bench_{uuid.uuid4().hex[:8]}"
    if not PASSWORDS:  # once per run: roles.ensure sets them again, which must not lock out a running service
        PASSWORDS.update({role: secrets.token_hex(16) for role in (roles.OWNER_ROLE, roles.RUNTIME_ROLE)})
    passwords = PASSWORDS
    asyncio.run(roles.ensure(dsn(server_url), name, passwords))
    migrate(roles.with_login(server_url, roles.OWNER_ROLE, passwords[roles.OWNER_ROLE], name), roles.RUNTIME_ROLE)
    url = server_url.rsplit("/", 1)[0] + f"/{name}"
    RUNTIME_URLS[url] = roles.with_login(server_url, roles.RUNTIME_ROLE, passwords[roles.RUNTIME_ROLE], name)
    return url


def runtime_url(url: str) -> str:
    """The runtime role's URL on a database create() made (`url` itself for any other), in the
    spelling `url` came in: SQLAlchemy's for the project, asyncpg's (dsn()) for the baseline."""
    for made, runtime in RUNTIME_URLS.items():
        if url == made:
            return runtime
        if url == dsn(made):
            return dsn(runtime)
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
            return Catalog(tenant=tenant, collection_point_id=point.id, collection_point_key=point.key,
                           notice_id=notice.id, notice_key=notice.key, notice_version=notice.version,
                           notice_sha256=notice.sha256,
                           purposes=tuple((p.id, p.key, p.disclosure_hash) for p, _ in purposes))
    finally:
        await engine.dispose()
