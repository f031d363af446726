"""Test fixtures: one real PostgreSQL per run (embedded unless TEST_DATABASE_URL), migrated with
Alembic, and a fresh tenant per test so tests never see each other's rows and may commit for real
(concurrency and rollback tests need real commits, which a per-test savepoint would hide).

Roles as in production (README, "Database roles"): a fresh database owned by consent_ledger_owner,
migrated as that role; the app (`settings`, `database_url`) runs as consent_ledger_runtime. `db` and
`superuser_url` are a superuser, for assertions and for tampering as a rogue DBA would.

TEST_DATABASE_URL must name a superuser; the two roles are created on that server if missing, their
passwords derived from TEST_DATABASE_URL (so runs sharing a server agree on them)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import httpx
import pytest

from app.auth.tokens import issue
from app.catalog.tenants import create_tenant
from app.cli import migrate
from app.core import roles
from app.core.embedded_pg import EmbeddedPostgres, free_port
from app.core.settings import Settings
from app.main import create_app

TEST_SECRET = "test-secret-please-change-0123456789"
ALL_SCOPES = ("consents:write", "consents:read", "catalog:write", "catalog:read", "audit:read", "webhooks:admin")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "proof: needs revision 0004's tables and functions (evidence, the "
                                       "Merkle log, receipts)")


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


class DatabaseUrls(NamedTuple):
    superuser: str  # SQLAlchemy URLs, all on the same fresh database
    owner: str
    runtime: str


def on_database(url: str, database: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=database).render_as_string(hide_password=False)


def _external_roles(server_url: str, name: str) -> DatabaseUrls:
    """Both roles on an external server (made if missing), passwords derived from its superuser URL."""
    passwords = {role: hashlib.sha256(f"{server_url}\0{role}".encode()).hexdigest()[:32]
                 for role in (roles.OWNER_ROLE, roles.RUNTIME_ROLE)}
    asyncio.run(roles.ensure(_plain(server_url), name, passwords))
    return DatabaseUrls(
        superuser=on_database(server_url, name),
        owner=roles.with_login(server_url, roles.OWNER_ROLE, passwords[roles.OWNER_ROLE], name),
        runtime=roles.with_login(server_url, roles.RUNTIME_ROLE, passwords[roles.RUNTIME_ROLE], name))


@pytest.fixture(scope="session")
def test_database() -> Iterator[DatabaseUrls]:
    """A freshly created database owned by the owner role, migrated to head by that role."""
    external = os.environ.get("TEST_DATABASE_URL")
    name = f"cl_test_{uuid.uuid4().hex[:10]}"
    pg = None if external else EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="cl-test-")) / "pg", free_port(),
                                                fast_unsafe=True)
    try:
        if pg is None:
            server_url = external
            urls = _external_roles(external, name)
        else:
            pg.start()
            server_url = pg.url
            owner, runtime = pg.ensure_roles(name)
            urls = DatabaseUrls(superuser=pg.superuser_url(name), owner=owner, runtime=runtime)
        try:
            migrate(urls.owner, roles.RUNTIME_ROLE)
            yield urls
        finally:
            asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        if pg is not None:
            pg.stop(mode="immediate")


async def _admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(_plain(server_url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def superuser_url(test_database: DatabaseUrls) -> str:
    """A superuser on the test database (also the server: swap the database name for another)."""
    return test_database.superuser


@pytest.fixture(scope="session")
def owner_url(test_database: DatabaseUrls) -> str:
    return test_database.owner


@pytest.fixture(scope="session")
def database_url(test_database: DatabaseUrls) -> str:
    """The app's URL: the runtime role on the test database."""
    return test_database.runtime


@pytest.fixture(scope="session", autouse=True)
def proof_keys() -> Iterator[tuple[Path, Path]]:
    """A signing key and a ledger secret for this run, in files as production keeps them; also in
    this process's environment, so every `consent-ledger serve` / `worker` a test starts has them."""
    from app.proof import keys

    directory = Path(tempfile.mkdtemp(prefix="cl-test-keys-"))
    paths = directory / "signing-key.pem", directory / "ledger-secret"
    keys.generate_key_file(paths[0])
    keys.generate_secret_file(paths[1])
    saved = {name: os.environ.get(name) for name in ("SIGNING_KEY_FILE", "LEDGER_SECRET_FILE")}
    os.environ.update(SIGNING_KEY_FILE=str(paths[0]), LEDGER_SECRET_FILE=str(paths[1]))
    yield paths
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def settings(database_url: str, proof_keys: tuple[Path, Path]) -> Settings:
    # AUDIT_DATABASE_URL points at the primary: the audit reads take their own pool, as on a replica
    return Settings(database_url=database_url, audit_database_url=database_url, jwt_secret=TEST_SECRET,
                    jwt_issuer="test-issuer",
                    signing_key_file=proof_keys[0], ledger_secret_file=proof_keys[1],
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
async def db(superuser_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A raw SUPERUSER connection for assertions and tamper attempts (a rogue DBA), outside the app."""
    conn = await asyncpg.connect(_plain(superuser_url))
    yield conn
    await conn.close()


@pytest.fixture
async def runtime_db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A raw connection as the runtime role: what a compromised API or worker could do."""
    conn = await asyncpg.connect(_plain(database_url))
    yield conn
    await conn.close()


@pytest.fixture
async def owner_db(owner_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A raw connection as the owner role (the migrations' account)."""
    conn = await asyncpg.connect(_plain(owner_url))
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
