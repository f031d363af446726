"""Engine, sessions and the one-unit-of-work-per-request dependency."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from app.core.responses import dumps
from app.core.actor import ActingSession
from app.core.settings import Settings

# Stable constraint names keep Alembic diffs and error messages predictable.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def apply_naming_convention(metadata: MetaData) -> MetaData:
    metadata.naming_convention = NAMING_CONVENTION
    return metadata


def pool_budget(settings: Settings) -> tuple[int, int]:
    """(ledger, catalog) connections: together DB_POOL_SIZE, the most one API process opens.

    Two pools, because the catalog's CRUD reads best through SQLModel and the ledger's hot paths
    through plain asyncpg (see docs/design.md); neither may grow past its share, so N replicas
    open at most N x DB_POOL_SIZE connections, which is what max_connections must be sized for.
    """
    ledger = settings.db_pool_size - settings.db_catalog_pool_size
    if settings.db_catalog_pool_size < 1 or ledger < 1:
        raise ValueError(f"DB_POOL_SIZE ({settings.db_pool_size}) must exceed DB_CATALOG_POOL_SIZE "
                         f"({settings.db_catalog_pool_size}), and both must be at least 1")
    return ledger, settings.db_catalog_pool_size


def server_settings(settings: Settings) -> dict[str, str]:
    """Session settings every API connection starts with (so they are also what a reset restores)."""
    return {
        "application_name": "consent-ledger", "timezone": "UTC",
        "lock_timeout": f"{int(settings.db_lock_timeout_seconds * 1000)}ms",
        "statement_timeout": f"{int(settings.db_statement_timeout_seconds * 1000)}ms",
    }


def _command_timeout(settings: Settings) -> float:
    """The client's own limit on one statement: for a server that stopped answering at all (and so
    cannot cancel anything itself)."""
    return settings.db_statement_timeout_seconds + 5


def create_engine(url: str, settings: Settings) -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=pool_budget(settings)[1],
        max_overflow=0,
        pool_recycle=1800,
        pool_timeout=settings.db_acquire_timeout_seconds,
        connect_args={"server_settings": server_settings(settings), "timeout": settings.db_connect_timeout_seconds,
                      "command_timeout": _command_timeout(settings)},
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False, sync_session_class=ActingSession)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """Commit once at the edge when the route returns; roll back on any error."""
    async with request.app.state.sessions() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


# scope="function": the commit happens before the response is built, so a failed commit
# becomes an error response instead of a success the client already received.
Session = Annotated[AsyncSession, Depends(get_session, scope="function")]


# --- the ledger's own asyncpg pool -------------------------------------------------------------
# Recording and the subject reads are the calls every sign-up and preference page makes; they run
# on a plain asyncpg pool (measured in bench/: the SQLAlchemy session, its pool and response-model
# validation cost more than the SQL itself). Same database, same one-transaction-per-request rule.


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=dumps, decoder=json.loads,
                                  schema="pg_catalog")


async def connect(url: str, settings: Settings, name: str, *, reader: bool = False) -> asyncpg.Connection:
    """One connection of its own, for a command or a job (not a request): in UTC, named `name` in
    pg_stat_activity; `reader`: JSON decoded as the API's pools decode it."""
    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=settings.db_connect_timeout_seconds,
                                 server_settings={"application_name": name, "timezone": "UTC"})
    if reader:
        await _init_connection(conn)
    return conn


async def release_as_is(conn: asyncpg.Connection) -> None:
    """The pool's reset on release. asyncpg still rolls back a transaction left open (that part
    runs before this hook); the default's extra round trip (`pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL`) is skipped because nothing on this pool changes session state: no SET,
    LISTEN, session advisory lock or cursor outside a transaction (tests/core/test_pools.py checks
    a connection comes back clean; the webhook worker's pool, used only for its own statements, too).
    Measured: one round trip of two per read, ~6 % of its CPU."""


class LedgerPool(asyncpg.Pool):
    """An asyncpg pool whose every acquire is bounded, `pool.fetch()` and friends included (they
    acquire without a timeout): a full pool (say, requests queued behind one held row lock) is a
    503 after DB_ACQUIRE_TIMEOUT_SECONDS for the next caller, not a wait with no end."""

    def __init__(self, *args, acquire_timeout: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.acquire_timeout = acquire_timeout

    def acquire(self, *, timeout: float | None = None):
        return super().acquire(timeout=self.acquire_timeout if timeout is None else timeout)


async def create_pool(url: str, settings: Settings) -> asyncpg.Pool:
    return await LedgerPool(
        asyncpg_dsn(url), min_size=1, max_size=pool_budget(settings)[0], reset=release_as_is,
        acquire_timeout=settings.db_acquire_timeout_seconds, timeout=settings.db_connect_timeout_seconds,
        command_timeout=_command_timeout(settings), init=_init_connection, server_settings=server_settings(settings),
        max_queries=50000, max_inactive_connection_lifetime=300.0, connection_class=asyncpg.Connection,
        record_class=asyncpg.Record, loop=None,
    )


async def _ledger_writer(request: Request) -> AsyncIterator[asyncpg.Connection]:
    """A connection inside one transaction: committed when the route returns, rolled back on error."""
    async with request.app.state.pool.acquire() as conn, conn.transaction():
        yield conn


@asynccontextmanager
async def ledger_transaction(request: Request) -> AsyncIterator[asyncpg.Connection]:
    """The same unit of work as LedgerWriter, opened by the route itself: for the consent writes,
    where FastAPI's function-scoped generator dependency (an exit stack and a shielded cancel
    scope per request) cost a recording more CPU under load than its SQL's parameters (bench/README.md)."""
    async with request.app.state.pool.acquire() as conn, conn.transaction():
        yield conn


async def _ledger_reader(request: Request) -> asyncpg.Pool:
    """The pool itself: each read is one statement (a consistent snapshot alone), and the pool's
    fetch takes and returns a connection around it, without BEGIN/COMMIT or a yield dependency."""
    return request.app.state.pool


async def _audit_reader(request: Request) -> asyncpg.Pool:
    """AUDIT_DATABASE_URL's pool (a read replica), or the primary's when it is not set."""
    return request.app.state.audit_pool


LedgerWriter = Annotated[asyncpg.Connection, Depends(_ledger_writer, scope="function")]
LedgerReader = Annotated[asyncpg.Pool, Depends(_ledger_reader)]
AuditReader = Annotated[asyncpg.Pool, Depends(_audit_reader)]
