"""Alembic environment: async engine as the OWNER role, from the URL passed by the caller, else
DATABASE_OWNER_URL, else DATABASE_URL (a single-account setup; README, "Database roles")."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

import app.audit.models  # noqa: F401 - register tables
import app.catalog.models  # noqa: F401
import app.consents.models  # noqa: F401
import app.duties.models  # noqa: F401
import app.proof.models  # noqa: F401
import app.webhooks.models  # noqa: F401
from alembic import context
from app.core.settings import get_settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)
target_metadata = SQLModel.metadata


def database_url() -> str:
    settings = get_settings()
    url = config.attributes.get("database_url") or settings.database_owner_url or settings.database_url
    if not url:
        raise RuntimeError("DATABASE_OWNER_URL (or DATABASE_URL) is not set")
    return url


def runtime_role() -> str:
    """Whom the migrations grant the runtime privileges to (app/core/roles.py)."""
    return config.attributes.get("runtime_role") or get_settings().db_runtime_role


def _refuse_runtime_role(connection: Connection) -> None:
    """Migrating as the runtime role would fail half-way on a privilege error: say why at once."""
    if connection.execute(text("SELECT current_user")).scalar() == runtime_role():
        raise RuntimeError(f"migrations run as the owner role, not the runtime role {runtime_role()}: "
                           "set DATABASE_OWNER_URL (README, Database roles)")


def run_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


# Replicas started with `serve --migrate` all run this at once: one migrates, the others wait on
# the lock and then find the schema at head. A session-level lock (not a transaction one) stays
# held if a migration ever commits part-way (e.g. an autocommit block), and dies with the connection.
MIGRATION_LOCK = 0x636C5F6D6967  # "cl_mig"


def _run(connection: Connection) -> None:
    _refuse_runtime_role(connection)
    config.attributes.setdefault("runtime_role", runtime_role())
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
    connection.commit()
    try:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
        connection.commit()


async def run_online() -> None:
    engine = create_async_engine(database_url())
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    asyncio.run(run_online())
