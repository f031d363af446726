"""Events recorded before chain version 2 (revision 0003) survive the upgrade untouched, still
verify in their own form, enter the Merkle log first, and new events chain onto them."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
from alembic import command

from app.consents import chain, ledger, verification
from app.core.db import _init_connection
from app.proof import keys
from tests.conftest import _plain, on_database
from tests.test_migrations import _config, scratch  # noqa: F401 - the fixture


def _v1_event(tenant: str, subject_id: uuid.UUID, purpose_id: uuid.UUID, seq: int, prev_hash: str | None,
              status: str, previous: str | None, at: datetime) -> dict:
    event = {
        "id": uuid.uuid4(), "tenant_id": tenant, "subject_id": subject_id, "seq": seq, "purpose_id": purpose_id,
        "version": seq, "action": status, "status": status, "previous_status": previous, "collection_point_id": None,
        "notice_id": None, "disclosure_hash": None, "method": "web", "actor_type": "subject", "actor_ref": None,
        "guardian": None, "ip": "203.0.113.9", "user_agent": "old-browser", "occurred_at": at, "recorded_at": at,
        "request_id": uuid.uuid4(), "reason": None, "prev_hash": prev_hash,
    }
    event["hash"] = chain.legacy_hash(chain.legacy_payload(event))
    return event


async def _seed_v1(url: str) -> tuple[str, uuid.UUID, list[dict]]:
    conn = await asyncpg.connect(_plain(url))
    try:
        tenant = "legacy"
        await conn.execute("INSERT INTO tenants (id, name) VALUES ($1, '옛 고객사')", tenant)
        purpose_id = await conn.fetchval(
            "INSERT INTO purposes (tenant_id, key, kind, channel, disclosures, disclosure_hash, active) "
            "VALUES ($1, 'marketing-sms', 'marketing', 'sms', '{}'::jsonb, 'h', true) RETURNING id", tenant)
        subject_id = await conn.fetchval(
            "INSERT INTO subjects (tenant_id, external_id) VALUES ($1, 'old-member') RETURNING id", tenant)
        at = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        first = _v1_event(tenant, subject_id, purpose_id, 1, None, "granted", None, at)
        second = _v1_event(tenant, subject_id, purpose_id, 2, first["hash"], "withdrawn", "granted",
                           at + timedelta(days=30))
        for event in (first, second):
            columns = list(event)
            values = [json.dumps(v) if k == "guardian" and v is not None else v for k, v in event.items()]
            await conn.execute(f"INSERT INTO consent_events ({', '.join(columns)}) VALUES "
                               f"({', '.join(f'${i + 1}' for i in range(len(columns)))})", *values)
        await conn.execute(
            "INSERT INTO consent_states (subject_id, purpose_id, tenant_id, status, version, since, last_event_id) "
            "VALUES ($1, $2, $3, 'withdrawn', 2, $4, $5)", subject_id, purpose_id, tenant, second["recorded_at"],
            second["id"])
        await conn.execute("UPDATE subjects SET last_seq = 2, last_hash = $2 WHERE id = $1", subject_id,
                           second["hash"])
        return tenant, purpose_id, [first, second]
    finally:
        await conn.close()


def test_version_1_events_stay_verifiable_and_new_ones_chain_onto_them(scratch, database_url, proof_keys):  # noqa: F811
    command.upgrade(_config(scratch), "0003")
    tenant, purpose_id, old = asyncio.run(_seed_v1(scratch))
    command.upgrade(_config(scratch), "head")
    runtime = on_database(database_url, scratch.rsplit("/", 1)[1])
    secret = keys.load_secret(proof_keys[1], None)

    async def check() -> None:
        pool = await asyncpg.create_pool(_plain(runtime), min_size=1, max_size=2, init=_init_connection)
        try:
            report = await verification.verify(pool, tenant, "old-member", secret)
            assert report["valid"], report["breaks"]
            assert report["log"] == {"logged": 0, "pending": 2}  # queued by the migration, oldest first
            rows = await pool.fetch("SELECT chain_version, purpose_key, hash FROM consent_events ORDER BY seq")
            assert [(r["chain_version"], r["purpose_key"], r["hash"]) for r in rows] == \
                [(1, "marketing-sms", e["hash"]) for e in old]
            async with pool.acquire() as conn, conn.transaction():
                head = await ledger.lock_subject(conn, tenant, "old-member", create=False)
                batch = ledger.chain_onto(
                    head, tenant=tenant, subject_ref="old-member",
                    changes=[ledger.Change(purpose_id=purpose_id, purpose_key="marketing-sms", action="granted",
                                           status="granted", previous_status="withdrawn", previous_version=2)],
                    evidence=ledger.Evidence(method="app", actor_type="subject", actor_ref=None, guardian=None,
                                             ip=None, user_agent=None, occurred_at=None),
                    request_id=uuid.uuid4(), secret=secret)
                await ledger.write(conn, tenant, "old-member", batch)
            report = await verification.verify(pool, tenant, "old-member", secret)
            assert report["valid"] and report["events_checked"] == 3, report["breaks"]
            third = await pool.fetchrow("SELECT chain_version, prev_hash FROM consent_events WHERE seq = 3")
            assert (third["chain_version"], third["prev_hash"]) == (2, old[1]["hash"])
        finally:
            await pool.close()

    asyncio.run(check())
