"""Connections per API process are bounded by DB_POOL_SIZE, and /readyz asks the ledger's own pool."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from app.core.settings import Settings
from app.main import create_app
from tests.helpers import sign_up


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield application, client


async def _connections(db) -> int:
    return await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")


async def test_one_process_never_holds_more_than_db_pool_size_connections(settings, auth, demo, client, db):
    assert (await sign_up(client, auth(demo), "pool-member")).status_code == 201
    budget = 6
    before = await _connections(db)
    peak = before
    # (the audit pool reads a replica in production: its connections count on that server, not here)
    async with running(dataclasses.replace(settings, db_pool_size=budget, db_catalog_pool_size=2,
                                           audit_database_url=None)) as (_, small):
        headers = auth(demo)
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, await _connections(db))
                await asyncio.sleep(0.005)

        sampler = asyncio.create_task(sample())
        for _ in range(3):
            answers = await asyncio.gather(*(
                small.get("/v1/purposes" if i % 2 else "/v1/subjects/pool-member/consents", headers=headers)
                for i in range(60)))
            assert {a.status_code for a in answers} == {200}
        done.set()
        await sampler
    assert peak - before <= budget, f"{peak - before} connections opened with DB_POOL_SIZE={budget}"


async def test_the_budget_is_split_between_ledger_and_catalog(settings):
    async with running(dataclasses.replace(settings, db_pool_size=9, db_catalog_pool_size=3)) as (app, _):
        assert app.state.pool.get_max_size() == 6
        assert app.state.engine.pool.size() == 3
        assert app.state.engine.pool._max_overflow == 0


class HangingPool:
    """A ledger pool whose database never answers."""

    async def fetchval(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(3600)

    def acquire(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("readyz should ask with one statement")


async def test_readyz_checks_the_ledger_pool_with_a_short_timeout(settings):
    async with running(settings) as (app, client):
        assert (await client.get("/readyz")).status_code == 200
        real = app.state.pool
        app.state.pool = HangingPool()
        try:
            started = time.monotonic()
            response = await client.get("/readyz")
            assert time.monotonic() - started < 5
        finally:
            app.state.pool = real
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"


async def test_readyz_is_503_when_the_ledger_pool_is_gone(settings):
    async with running(settings) as (app, client):
        await app.state.pool.close()
        response = await client.get("/readyz")
        assert response.status_code == 503, response.text


async def test_ledger_connections_come_back_clean_without_the_reset_round_trip(settings, auth, demo):
    """The ledger pool skips asyncpg's RESET ALL/UNLISTEN round trip on release, which is only sound
    while nothing on it leaves session state behind: drive every kind of call, then inspect each
    pooled connection. A transaction left open is still rolled back by asyncpg."""
    async with running(dataclasses.replace(settings, db_pool_size=4, db_catalog_pool_size=1)) as (app, client):
        headers = auth(demo)
        assert (await sign_up(client, headers, "clean-member", granted={"marketing-sms"})).status_code == 201
        assert (await client.post("/v1/subjects/clean-member/consents/marketing-sms/withdraw",
                                  headers=headers)).status_code == 200
        for path in ("/v1/subjects/clean-member/consents", "/v1/subjects/clean-member/consents/history",
                     "/v1/subjects/clean-member/consents/verify", "/v1/webhook-endpoints", "/v1/purposes"):
            assert (await client.get(path, headers=headers)).status_code == 200, path
        pool = app.state.pool
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")  # left open on purpose
        connections = [await pool.acquire() for _ in range(pool.get_size())]
        try:
            for conn in connections:
                assert not conn.is_in_transaction()
                changed = await conn.fetch("SELECT name FROM pg_settings "
                                       "WHERE source = 'session' AND setting IS DISTINCT FROM reset_val")
                assert [r["name"] for r in changed] == []
                assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
                assert await conn.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory'") == 0
                assert await conn.fetchval("SELECT count(*) FROM pg_cursors WHERE name <> ''") == 0
        finally:
            for conn in connections:
                await pool.release(conn)
