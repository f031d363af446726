"""The purge: old delivered webhook messages go with their deliveries and attempts, dead letters go
later, pending deliveries and ledger events never; batched, and never waiting on a held row."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import subprocess
import sys
import uuid

import asyncpg
import pytest

from app.cli import ROOT
from app.core.embedded_pg import free_port
from app.core.retention import purge_once, run_purger
from app.core.settings import Settings
from tests.helpers import event_count, sign_up

DAY = 86400


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture
async def pool(database_url: str):
    p = await asyncpg.create_pool(_plain(database_url), min_size=1, max_size=2)
    yield p
    await p.close()


async def _endpoint(db, tenant: str) -> uuid.UUID:
    return await db.fetchval(
        "INSERT INTO webhook_endpoints (tenant_id, url, secret, kinds, enabled) "
        "VALUES ($1, 'https://hooks.example.com/x', 'whsec_dGVzdA==', '{}', false) RETURNING id", tenant)


async def _message(db, tenant: str, *deliveries: tuple[uuid.UUID, str, float], attempts: int = 2) -> uuid.UUID:
    """A message created as old as its oldest delivery; each delivery (endpoint, status, age in days)
    finished (delivered_at / failed_at) that long ago, or pending (due that long ago)."""
    oldest = max(age for _, _, age in deliveries)
    message_id = await db.fetchval(
        "INSERT INTO webhook_messages (tenant_id, type, subject_ref, body, created_at) "
        "VALUES ($1, 'consent.granted', 'member-x', '{}', now() - make_interval(secs => $2)) RETURNING id",
        tenant, oldest * DAY)
    for endpoint_id, status, age in deliveries:
        delivery_id = await db.fetchval(
            """INSERT INTO webhook_deliveries (tenant_id, message_id, endpoint_id, status, created_at, next_attempt_at,
                                               delivered_at, failed_at)
               VALUES ($1, $2, $3, $4, now() - make_interval(secs => $5), now() - make_interval(secs => $5),
                       CASE WHEN $4 = 'delivered' THEN now() - make_interval(secs => $6) END,
                       CASE WHEN $4 = 'failed' THEN now() - make_interval(secs => $6) END)
               RETURNING id""",
            tenant, message_id, endpoint_id, status, oldest * DAY, age * DAY)
        for _ in range(attempts):
            await db.execute("INSERT INTO webhook_attempts (tenant_id, delivery_id, status_code) VALUES ($1, $2, 500)",
                             tenant, delivery_id)
    return message_id


async def _exists(db, message_id: uuid.UUID) -> bool:
    return await db.fetchval("SELECT count(*) FROM webhook_messages WHERE id = $1", message_id) == 1


async def _rows(db, tenant: str) -> tuple[int, int, int]:
    return (await db.fetchval("SELECT count(*) FROM webhook_messages WHERE tenant_id = $1", tenant),
            await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE tenant_id = $1", tenant),
            await db.fetchval("SELECT count(*) FROM webhook_attempts WHERE tenant_id = $1", tenant))


async def test_purge_deletes_exactly_what_is_done_and_old_enough(pool, db, settings, client, auth, demo):
    assert (await sign_up(client, auth(demo), "keeps-history", {"marketing", "marketing-sms"})).status_code == 201
    events = await event_count(db, demo, "keeps-history")
    sms, kakao = await _endpoint(db, demo), await _endpoint(db, demo)
    gone = {
        "delivered 40 days ago": await _message(db, demo, (sms, "delivered", 40)),
        "delivered to both, 40 and 50 days ago": await _message(db, demo, (sms, "delivered", 40),
                                                                 (kakao, "delivered", 50)),
        "dead letter of 400 days": await _message(db, demo, (sms, "failed", 400)),
        "delivered 31 days ago after 3 attempts": await _message(db, demo, (kakao, "delivered", 31), attempts=3),
    }
    kept = {
        "delivered 10 days ago": await _message(db, demo, (sms, "delivered", 10)),
        "delivered 29 days ago": await _message(db, demo, (sms, "delivered", 29)),
        "paused for 400 days": await _message(db, demo, (sms, "pending", 400)),
        "due since 40 days": await _message(db, demo, (kakao, "pending", 40)),
        "one endpoint done long ago, one still pending": await _message(db, demo, (sms, "delivered", 40),
                                                                         (kakao, "pending", 40)),
        "dead letter of 40 days": await _message(db, demo, (sms, "failed", 40)),
        "dead letter of 300 days": await _message(db, demo, (sms, "failed", 300)),
        "delivered long ago, dead letter elsewhere of 100 days": await _message(db, demo, (sms, "delivered", 90),
                                                                                 (kakao, "failed", 100)),
    }
    before = await _rows(db, demo)

    counts = await purge_once(pool, settings)

    assert {name for name, m in gone.items() if await _exists(db, m)} == set()
    assert {name for name, m in kept.items() if not await _exists(db, m)} == set()
    after = await _rows(db, demo)
    assert (counts["messages"], counts["deliveries"], counts["attempts"]) == (4, 5, 11)
    assert tuple(b - a for b, a in zip(before, after)) == (4, 5, 11)
    assert await event_count(db, demo, "keeps-history") == events  # the ledger is never purged
    assert (await purge_once(pool, settings))["messages"] == 0


async def test_retention_periods_are_settings(pool, db, settings, tenant):
    endpoint = await _endpoint(db, tenant)
    delivered = await _message(db, tenant, (endpoint, "delivered", 3))
    dead = await _message(db, tenant, (endpoint, "failed", 8))
    await purge_once(pool, dataclasses.replace(settings, webhook_retention_days=4,
                                               webhook_dead_letter_retention_days=9))
    assert await _exists(db, delivered) and await _exists(db, dead)
    await purge_once(pool, dataclasses.replace(settings, webhook_retention_days=2,
                                               webhook_dead_letter_retention_days=7))
    assert not await _exists(db, delivered) and not await _exists(db, dead)


async def _old_deliveries(db, settings: Settings) -> dict[uuid.UUID, int]:
    cutoff_days = min(settings.webhook_retention_days, settings.webhook_dead_letter_retention_days)
    rows = await db.fetch(
        "SELECT e.id, count(d.id) AS n FROM webhook_endpoints e LEFT JOIN webhook_deliveries d ON d.endpoint_id = e.id"
        " AND d.created_at < now() - make_interval(days => $1) GROUP BY e.id", int(cutoff_days))
    return {r["id"]: r["n"] for r in rows}


async def test_purge_works_in_batches_of_the_configured_size(pool, db, settings, tenant):
    endpoint = await _endpoint(db, tenant)
    for _ in range(25):
        await _message(db, tenant, (endpoint, "delivered", 40), attempts=1)
    for i in range(12):
        await db.execute("INSERT INTO idempotency_keys (tenant_id, key, request_hash, response, created_at) "
                         "VALUES ($1, $2, 'h', '{}', now() - interval '8 days')", tenant, f"old-{i}")
    await db.execute("INSERT INTO idempotency_keys (tenant_id, key, request_hash, response) "
                     "VALUES ($1, 'fresh', 'h', '{}')", tenant)
    small = dataclasses.replace(settings, purge_batch_size=10)
    old = await _old_deliveries(db, small)
    expired_keys = await db.fetchval(
        "SELECT count(*) FROM idempotency_keys WHERE created_at < now() - interval '7 days'")

    counts = await purge_once(pool, small)

    # a statement per started batch of 10: 3 for this endpoint's 25 (10, 10, 5), 2 for the 12 keys
    assert counts["batches"] == sum(n // 10 + 1 for n in old.values()) + expired_keys // 10 + 1
    assert old[endpoint] == 25
    assert counts["messages"] >= 25 and await _rows(db, tenant) == (0, 0, 0)
    assert counts["idempotency_keys"] == expired_keys >= 12
    assert [r["key"] for r in await db.fetch("SELECT key FROM idempotency_keys WHERE tenant_id = $1", tenant)] \
        == ["fresh"]


async def test_purge_skips_rows_held_by_others_instead_of_waiting(pool, db, settings, tenant, database_url):
    endpoint = await _endpoint(db, tenant)
    held, free = (await _message(db, tenant, (endpoint, "failed", 400)),
                  await _message(db, tenant, (endpoint, "failed", 400)))
    holder = await asyncpg.connect(_plain(database_url))
    try:
        transaction = holder.transaction()
        await transaction.start()
        # e.g. an operator's retry of this dead letter, not yet committed
        await holder.execute("UPDATE webhook_deliveries SET last_error = 'retrying' WHERE message_id = $1", held)
        counts = await asyncio.wait_for(purge_once(pool, settings), 10)
        assert counts["messages"] >= 1
        assert await _exists(db, held) and not await _exists(db, free)
        await transaction.rollback()
    finally:
        await holder.close()
    await purge_once(pool, settings)
    assert not await _exists(db, held)


async def test_a_retry_committed_meanwhile_keeps_the_message(pool, db, settings, tenant):
    endpoint = await _endpoint(db, tenant)
    retried = await _message(db, tenant, (endpoint, "failed", 400))
    await db.execute("UPDATE webhook_deliveries SET status = 'pending', failed_at = NULL, attempts = 0 "
                     "WHERE message_id = $1", retried)
    await purge_once(pool, settings)
    assert await _exists(db, retried)


async def test_cli_purge(database_url, db, tenant):
    endpoint = await _endpoint(db, tenant)
    old, recent = (await _message(db, tenant, (endpoint, "delivered", 40)),
                   await _message(db, tenant, (endpoint, "delivered", 1)))
    env = {**os.environ, "DATABASE_URL": database_url, "WEBHOOK_RETENTION_DAYS": "30"}
    result = subprocess.run([sys.executable, "-m", "app.cli", "purge"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "messages=" in result.stdout
    assert not await _exists(db, old) and await _exists(db, recent)


async def test_run_purger_purges_on_its_interval_until_stopped(db, settings, tenant):
    endpoint = await _endpoint(db, tenant)
    first = await _message(db, tenant, (endpoint, "delivered", 40))
    stop = asyncio.Event()
    task = asyncio.create_task(run_purger(dataclasses.replace(settings, purge_interval_seconds=0.2), stop))
    try:
        for _ in range(100):
            if not await _exists(db, first):
                break
            await asyncio.sleep(0.05)
        assert not await _exists(db, first)
        second = await _message(db, tenant, (endpoint, "delivered", 40))  # found on a later pass
        for _ in range(100):
            if not await _exists(db, second):
                break
            await asyncio.sleep(0.05)
        assert not await _exists(db, second)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_run_purger_outlives_a_database_it_cannot_reach(settings, caplog):
    nowhere = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none"
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="consent_ledger.retention"):
        task = asyncio.create_task(run_purger(
            dataclasses.replace(settings, database_url=nowhere, purge_interval_seconds=0.1), stop))
        await asyncio.sleep(0.8)
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, 5)
    failures = [r for r in caplog.records if "purge failed" in r.getMessage()]
    assert len(failures) >= 2  # retried, not given up
