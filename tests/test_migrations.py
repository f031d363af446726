"""Alembic, as the owner role: upgrade head, downgrade base, upgrade head again, on a scratch database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
from alembic import command
from alembic.config import Config

from app.cli import ROOT
from app.core import roles
from tests.conftest import _plain, on_database


def _config(url: str, runtime_role: str = roles.RUNTIME_ROLE) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.attributes["database_url"] = url
    config.attributes["runtime_role"] = runtime_role
    config.attributes["configure_logging"] = False
    return config


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(_plain(url))
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


async def _admin(server: str, sql: str) -> None:
    conn = await asyncpg.connect(_plain(server))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def scratch(superuser_url: str, owner_url: str) -> Iterator[str]:
    """A new empty database owned by the owner role; yields the owner's URL on it."""
    name = f"cl_mig_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(superuser_url, f'CREATE DATABASE "{name}" OWNER {roles.OWNER_ROLE}'))
    try:
        yield on_database(owner_url, name)
    finally:
        asyncio.run(_admin(superuser_url, f'DROP DATABASE "{name}" WITH (FORCE)'))


def test_upgrade_downgrade_upgrade(scratch):
    config = _config(scratch)
    command.upgrade(config, "head")
    assert {"consent_events", "consent_states", "subjects", "purposes"} <= asyncio.run(_tables(scratch))
    command.downgrade(config, "base")
    assert asyncio.run(_tables(scratch)) <= {"alembic_version"}
    command.upgrade(config, "head")
    assert "consent_events" in asyncio.run(_tables(scratch))


def test_a_missing_runtime_role_stops_the_migration_and_says_what_to_do(scratch):
    with pytest.raises(RuntimeError, match="role cl_nobody does not exist: create it .README, Database roles. "
                                           "or set DB_RUNTIME_ROLE"):
        command.upgrade(_config(scratch, runtime_role="cl_nobody"), "head")


def test_migrating_as_the_runtime_role_is_refused(scratch, database_url):
    runtime_on_scratch = on_database(database_url, scratch.rsplit("/", 1)[1])
    with pytest.raises(RuntimeError, match="owner role, not the runtime role"):
        command.upgrade(_config(runtime_on_scratch), "head")


def test_models_and_migrations_agree(owner_url):
    """A model change without its migration fails here (alembic check on the migrated test DB)."""
    command.check(_config(owner_url))
