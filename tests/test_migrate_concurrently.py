"""`serve --migrate` on many replicas at once (as the owner role): every process succeeds, the schema
is migrated once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import asyncpg
from alembic.config import Config
from alembic.script import ScriptDirectory

from app.cli import ROOT
from app.core import roles
from tests.conftest import on_database

REPLICAS = 4

# Each replica imports everything first and then waits on stdin, so the migrations really start together.
REPLICA = """
import sys
from app.cli import migrate
import alembic.command, app.catalog.models, app.consents.models, app.webhooks.models
print("ready", flush=True)
sys.stdin.readline()
migrate(sys.argv[1], sys.argv[2])
"""


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _admin(server: str, sql: str) -> None:
    conn = await asyncpg.connect(_plain(server))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _versions(url: str) -> list[str]:
    conn = await asyncpg.connect(_plain(url))
    try:
        return [r["version_num"] for r in await conn.fetch("SELECT version_num FROM alembic_version")]
    finally:
        await conn.close()


def _head() -> str:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    return ScriptDirectory.from_config(config).get_current_head()


def test_replicas_migrating_at_once_all_succeed_and_migrate_once(superuser_url, owner_url):
    name = f"cl_race_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(superuser_url, f'CREATE DATABASE "{name}" OWNER {roles.OWNER_ROLE}'))
    url = on_database(owner_url, name)
    replicas: list[subprocess.Popen] = []
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for _ in range(REPLICAS):
            replicas.append(subprocess.Popen(
                [sys.executable, "-c", REPLICA, url, roles.RUNTIME_ROLE], cwd=ROOT, env=env, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for replica in replicas:
            assert replica.stdout.readline().strip() == "ready"
        for replica in replicas:
            replica.stdin.write("go\n")
            replica.stdin.flush()
        outcomes = [(replica.wait(timeout=120), replica.stderr.read()) for replica in replicas]
        assert [code for code, _ in outcomes] == [0] * REPLICAS, "\n".join(err for _, err in outcomes)
        assert asyncio.run(_versions(url)) == [_head()]
    finally:
        for replica in replicas:
            if replica.poll() is None:
                replica.kill()
        asyncio.run(_admin(superuser_url, f'DROP DATABASE "{name}" WITH (FORCE)'))
