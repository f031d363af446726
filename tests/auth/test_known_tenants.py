"""A validly signed token is not enough: its tenant must exist, spelled exactly as created."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from app.catalog.tenants import KnownTenants
from app.cli import ROOT
from tests.helpers import sign_up

PROCESSOR = {"key": "ghost-proc", "name": "유령 수탁사", "task": "발송"}


def _assert_unknown_tenant(response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "tenant" in response.json()["detail"]


async def test_unknown_tenant_cannot_read(client, auth):
    _assert_unknown_tenant(await client.get("/v1/subjects/member-1/consents", headers=auth("t-nobody-here")))
    _assert_unknown_tenant(await client.get("/v1/purposes", headers=auth("t-nobody-here")))


async def test_unknown_tenant_cannot_write_a_processor(client, auth, db):
    ghost = f"t-ghost-{uuid.uuid4().hex[:8]}"
    _assert_unknown_tenant(await client.post("/v1/processors", json=PROCESSOR, headers=auth(ghost)))
    assert await db.fetchval("SELECT count(*) FROM processors WHERE tenant_id = $1", ghost) == 0


async def test_tenant_in_another_case_is_unknown(client, auth, demo, db):
    assert (await client.get("/v1/purposes", headers=auth(demo))).status_code == 200
    for spelling in (demo.upper(), demo.capitalize(), f" {demo}"):
        _assert_unknown_tenant(await client.get("/v1/purposes", headers=auth(spelling)))
        _assert_unknown_tenant(await client.post("/v1/processors", json=PROCESSOR, headers=auth(spelling)))
        assert await db.fetchval("SELECT count(*) FROM processors WHERE tenant_id = $1", spelling) == 0
    assert (await sign_up(client, auth(demo), "case-member")).status_code == 201
    _assert_unknown_tenant(await client.get("/v1/subjects/case-member/consents", headers=auth(demo.upper())))


async def test_a_tenant_created_a_moment_ago_works_at_once(app, client, auth):
    from app.catalog.tenants import create_tenant

    key = f"t-late-{uuid.uuid4().hex[:8]}"
    _assert_unknown_tenant(await client.get("/v1/processors", headers=auth(key)))  # refused: not remembered
    async with app.state.sessions() as session, session.begin():
        await create_tenant(session, key=key, name="늦게 온 회사")
    response = await client.get("/v1/processors", headers=auth(key))
    assert response.status_code == 200, response.text
    assert (await client.post("/v1/processors", json=PROCESSOR, headers=auth(key))).status_code == 201


class CountingPool:
    def __init__(self, existing: set[str]) -> None:
        self.existing = existing
        self.queries = 0

    async def fetchval(self, sql: str, key: str):
        self.queries += 1
        return True if key in self.existing else None


async def test_known_tenants_are_remembered_and_unknown_ones_are_not():
    pool = CountingPool({"known"})
    tenants = KnownTenants(ttl=60)
    assert [await tenants.contains(pool, "known") for _ in range(5)] == [True] * 5
    assert pool.queries == 1
    assert [await tenants.contains(pool, "later") for _ in range(3)] == [False] * 3
    assert pool.queries == 4
    pool.existing.add("later")
    assert await tenants.contains(pool, "later") is True


async def test_remembered_tenant_is_checked_again_after_the_ttl():
    pool = CountingPool({"known"})
    tenants = KnownTenants(ttl=0)
    await tenants.contains(pool, "known")
    pool.existing.clear()
    assert await tenants.contains(pool, "known") is False


def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "app.cli", "tenant", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


async def test_cli_creates_and_lists_tenants(client, auth, database_url, db):
    key = f"t-cli-{uuid.uuid4().hex[:8]}"
    _assert_unknown_tenant(await client.get("/v1/processors", headers=auth(key)))
    created = _cli(database_url, "create", key, "--name", "㈜씨엘아이", "--name-en", "CLI Inc.")
    assert created.returncode == 0, created.stderr
    assert key in created.stdout
    row = await db.fetchrow("SELECT name, name_en FROM tenants WHERE id = $1", key)
    assert (row["name"], row["name_en"]) == ("㈜씨엘아이", "CLI Inc.")
    assert (await client.get("/v1/processors", headers=auth(key))).status_code == 200

    listed = _cli(database_url, "list")
    assert listed.returncode == 0, listed.stderr
    assert any(line.split("\t")[:2] == [key, "㈜씨엘아이"] for line in listed.stdout.splitlines())

    again = _cli(database_url, "create", key, "--name", "다른 이름")
    assert again.returncode != 0 and "already exists" in again.stderr
    assert await db.fetchval("SELECT name FROM tenants WHERE id = $1", key) == "㈜씨엘아이"


@pytest.mark.parametrize("key", ["Upper-Case", "-leading", "trailing-", "under_score", "a" * 64, ""])
async def test_a_malformed_key_is_refused(app, db, key):
    from app.catalog.tenants import create_tenant
    from app.core.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as refused:
        async with app.state.sessions() as session, session.begin():
            await create_tenant(session, key=key, name="이름")
    assert [e.field for e in refused.value.errors] == ["key"]
    assert await db.fetchval("SELECT count(*) FROM tenants WHERE id = $1", key) == 0


async def test_cli_refuses_a_malformed_key(database_url, db):
    result = _cli(database_url, "create", "SmallTicket", "--name", "이름")
    assert result.returncode != 0
    assert "key" in result.stderr
    assert await db.fetchval("SELECT count(*) FROM tenants WHERE id = 'SmallTicket'") == 0
