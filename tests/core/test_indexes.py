"""Indexes earn their write cost: the delivery log's subject filter has one; unread ones are gone."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.auth.deps import Principal
from app.webhooks import service


class Explained(Exception):
    def __init__(self, plan: Any) -> None:
        self.plan = plan


class ExplainingPool:
    """Runs the service's own statement under EXPLAIN instead of executing it."""

    def __init__(self, db) -> None:
        self.db = db

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        return await self.db.fetchrow(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> Any:
        raise Explained(json.loads(await self.db.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)))


def _nodes(plan: dict[str, Any]):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def test_delivery_log_filtered_by_subject_reads_an_index(db, tenant):
    endpoint = await db.fetchval(
        "INSERT INTO webhook_endpoints (tenant_id, url, secret, kinds, enabled) "
        "VALUES ($1, 'https://hooks.example.com/log', 'whsec_dGVzdA==', '{}', false) RETURNING id", tenant)
    # 400 people x 10 messages each, all delivered to this endpoint
    await db.execute("""
        WITH m AS (
            INSERT INTO webhook_messages (tenant_id, type, subject_ref, body, created_at)
            SELECT $1, 'consent.granted', 'member-' || (i % 400), '{}', now() - make_interval(secs => i)
            FROM generate_series(1, 4000) i RETURNING id, created_at
        )
        INSERT INTO webhook_deliveries (tenant_id, message_id, endpoint_id, status, created_at, delivered_at)
        SELECT $1, m.id, $2, 'delivered', m.created_at, m.created_at FROM m""", tenant, endpoint)
    await db.execute("ANALYZE webhook_messages")
    await db.execute("ANALYZE webhook_deliveries")
    principal = Principal(tenant=tenant, sub="t", scopes=frozenset({"webhooks:admin"}))
    with pytest.raises(Explained) as explained:
        await service.list_deliveries(ExplainingPool(db), principal, endpoint_id=endpoint, status=None, type_=None,
                                      subject_id="member-7", since=None, until=None, cursor=None, limit=50)
    nodes = list(_nodes(explained.value.plan[0]["Plan"]))
    assert "ix_webhook_messages_subject" in {n.get("Index Name") for n in nodes}, nodes
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes


@pytest.mark.parametrize("index", [
    "ix_consent_events_tenant_recorded",   # no query lists a tenant's events by time
    "ix_webhook_messages_event_id",        # no query finds a message by its event
    "ix_webhook_messages_tenant_created",  # no query lists a tenant's messages by time
])
async def test_indexes_nothing_reads_are_gone(db, index):
    assert await db.fetchval("SELECT count(*) FROM pg_indexes WHERE indexname = $1", index) == 0
