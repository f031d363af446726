"""Alembic: upgrade head, downgrade base, upgrade head again, on a scratch database."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from alembic import command
from alembic.config import Config

from app.cli import ROOT


def _config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.attributes["database_url"] = url
    config.attributes["configure_logging"] = False
    return config


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


async def _admin(server: str, sql: str) -> None:
    conn = await asyncpg.connect(server.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def test_upgrade_downgrade_upgrade(database_url):
    name = f"cl_mig_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(database_url, f'CREATE DATABASE "{name}"'))
    url = database_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        config = _config(url)
        command.upgrade(config, "head")
        assert {"consent_events", "consent_states", "subjects", "purposes"} <= asyncio.run(_tables(url))
        command.downgrade(config, "base")
        assert asyncio.run(_tables(url)) <= {"alembic_version"}
        command.upgrade(config, "head")
        assert "consent_events" in asyncio.run(_tables(url))
    finally:
        asyncio.run(_admin(database_url, f'DROP DATABASE "{name}" WITH (FORCE)'))


def test_models_and_migrations_agree(database_url):
    """A model change without its migration fails here (alembic check on the migrated test DB)."""
    command.check(_config(database_url))
