"""Fixtures for the duty tests: a processor's token, an endpoint written straight to the table
(registering one resolves its host, which tests cannot), the scheduler run once."""

from __future__ import annotations

import asyncpg
import pytest

from app.auth.tokens import issue
from app.core.db import asyncpg_dsn
from app.duties import scheduler


@pytest.fixture
def processor_token(settings):
    def make(tenant: str, key: str, *scopes: str) -> dict[str, str]:
        token = issue(settings, tenant=tenant, sub=f"{key}-bot", scopes=scopes or ("duties:ack", "duties:read"),
                      extra={"processor": key})
        return {"Authorization": f"Bearer {token}"}
    return make


@pytest.fixture
def endpoint(db):
    async def make(tenant: str, *, processor: str | None = None, channels: tuple[str, ...] = (),
                   event_types: tuple[str, ...] = (), kinds: tuple[str, ...] = ("marketing",)) -> str:
        return str(await db.fetchval(
            "INSERT INTO webhook_endpoints (tenant_id, processor_id, url, channels, event_types, kinds, secret) "
            "VALUES ($1, (SELECT id FROM processors WHERE tenant_id = $1 AND key = $2), $3, $4, $5, $6, 'whsec') "
            "RETURNING id", tenant, processor, f"https://{processor or 'officer'}.example.com/hooks",
            list(channels), list(event_types), list(kinds)))
    return make


@pytest.fixture
def run_scheduler(database_url, settings):
    """One scheduler pass as the worker runs it (the runtime role, the service's secret)."""
    from app.proof.context import Proof

    proof = Proof.from_settings(settings)

    async def run() -> dict[str, int]:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            return await scheduler.run_pass(conn, proof.secret)
        finally:
            await conn.close()
    return run
