"""Test fixtures: one real PostgreSQL per run (embedded unless TEST_DATABASE_URL), migrated with
Alembic, and a fresh tenant per test so tests never see each other's rows and may commit for real
(concurrency and rollback tests need real commits, which a per-test savepoint would hide)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.auth.tokens import issue
from app.catalog.tenants import create_tenant
from app.cli import migrate
from app.core.embedded_pg import EmbeddedPostgres, free_port
from app.core.settings import Settings
from app.main import create_app

TEST_SECRET = "test-secret-please-change-0123456789"
ALL_SCOPES = ("consents:write", "consents:read", "catalog:write", "catalog:read", "audit:read", "webhooks:admin")


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture(scope="session")
def database_url() -> str:
    """A freshly created database, migrated to head."""
    external = os.environ.get("TEST_DATABASE_URL")
    pg = None
    if external:
        server_url = external
    else:
        pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="cl-test-")) / "pg", free_port(), fast_unsafe=True)
        pg.start()
        server_url = pg.url
    name = f"cl_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(_plain(server_url))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = server_url.rsplit("/", 1)[0] + f"/{name}"
    migrate(url)
    yield url
    try:
        asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        if pg is not None:
            pg.stop(mode="immediate")


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, jwt_secret=TEST_SECRET, jwt_issuer="test-issuer",
                    jwt_audience="consent-ledger-test", db_pool_size=40, db_catalog_pool_size=10,
                    # Webhooks: loopback receivers allowed explicitly, a retry schedule in tenths of seconds.
                    webhook_allowed_hosts=("127.0.0.1",), webhook_retry_schedule=(0, 0.2, 0.3, 0.4),
                    webhook_timeout_seconds=1.0, webhook_connect_timeout_seconds=0.5, webhook_lease_seconds=3.0,
                    webhook_poll_seconds=0.5, webhook_concurrency=16)


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[Any]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A raw connection for assertions and tamper attempts, outside the app."""
    conn = await asyncpg.connect(_plain(database_url))
    yield conn
    await conn.close()


TokenFactory = Callable[..., dict[str, str]]


@pytest.fixture
def auth(settings: Settings) -> TokenFactory:
    """auth(tenant, *scopes, sub=...) -> headers with a valid bearer token."""

    def make(tenant: str, *scopes: str, sub: str = "tester") -> dict[str, str]:
        token = issue(settings, tenant=tenant, sub=sub, scopes=scopes or ALL_SCOPES)
        return {"Authorization": f"Bearer {token}"}

    return make


NewTenant = Callable[[], Awaitable[str]]


@pytest.fixture
def new_tenant(app: Any) -> NewTenant:
    """await new_tenant() -> the key of a tenant created (committed) the way operators create one."""

    async def make() -> str:
        key = f"t-{uuid.uuid4().hex[:12]}"
        async with app.state.sessions() as session, session.begin():
            await create_tenant(session, key=key, name=f"Test tenant {key}")
        return key

    return make


@pytest.fixture
async def tenant(new_tenant: NewTenant) -> str:
    return await new_tenant()


@pytest.fixture
async def demo(app: Any, tenant: str) -> str:
    """The smallticket demo catalog (from the seed policy) loaded under this test's own tenant."""
    from app.demo.loader import load_catalog
    from app.demo.tenants import SMALLTICKET

    spec = {**SMALLTICKET, "tenant": {**SMALLTICKET["tenant"], "id": tenant}}
    async with app.state.sessions() as session, session.begin():
        await load_catalog(session, spec)
    return tenant
