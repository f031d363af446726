"""Bounded growth: purge webhook messages that are done with, and idempotency keys past their time.

Ledger events are never purged (the database refuses it anyway); the proof of consent is the
ledger, the webhook log only says who was told. A message goes as a whole, with its deliveries
and their attempts, once every delivery is finished and old enough: delivered ones after
WEBHOOK_RETENTION_DAYS, dead letters ("failed") after WEBHOOK_DEAD_LETTER_RETENTION_DAYS. A
pending delivery (due, in backoff, paused or in flight) keeps its message whatever its age.

Each batch is one statement, so one short transaction; rows someone holds (a worker recording a
result, an operator's retry) are skipped, never waited for, and looked at again next time.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from app.core.db import asyncpg_dsn
from app.core.settings import Settings

log = logging.getLogger("consent_ledger.retention")

# Finished and old enough, for a delivery `d`; $2 / $3 are the delivered / dead-letter cutoffs.
_EXPIRED = """((d.status = 'delivered' AND coalesce(d.delivered_at, d.created_at) < $2)
   OR (d.status = 'failed' AND coalesce(d.failed_at, d.created_at) < $3))"""

# One endpoint's deliveries, oldest first from a keyset position, pick the messages to examine
# (through ix_webhook_deliveries_endpoint: no index of its own for the purge). A message is deleted
# only when every one of its deliveries (one per endpoint) could be locked *and* still qualifies
# once locked: a retry that made one pending again, or a worker holding one, keeps the message.
# Deliveries and attempts go in the same statement; their foreign keys are checked at its end.
PURGE_MESSAGES = f"""
WITH scanned AS (
    SELECT d.message_id, d.created_at, d.id FROM webhook_deliveries d
    WHERE d.endpoint_id = $1 AND (d.created_at, d.id) > ($5::timestamptz, $6::uuid)
      AND d.created_at < greatest($2::timestamptz, $3::timestamptz)
    ORDER BY d.created_at, d.id
    LIMIT $4
), candidates AS (
    SELECT m.id FROM webhook_messages m
    WHERE m.id IN (SELECT message_id FROM scanned)
      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.message_id = m.id AND NOT {_EXPIRED})
    FOR UPDATE OF m SKIP LOCKED
), locked AS (
    SELECT d.id, d.message_id FROM webhook_deliveries d
    WHERE d.message_id IN (SELECT id FROM candidates) AND {_EXPIRED}
    FOR UPDATE OF d SKIP LOCKED
), complete AS (
    SELECT c.id FROM candidates c
    WHERE (SELECT count(*) FROM locked l WHERE l.message_id = c.id)
        = (SELECT count(*) FROM webhook_deliveries d WHERE d.message_id = c.id)
), attempts AS (
    DELETE FROM webhook_attempts a USING locked l
    WHERE a.delivery_id = l.id AND l.message_id IN (SELECT id FROM complete)
    RETURNING 1
), deliveries AS (
    DELETE FROM webhook_deliveries d USING locked l
    WHERE d.id = l.id AND l.message_id IN (SELECT id FROM complete)
    RETURNING 1
), messages AS (
    DELETE FROM webhook_messages m WHERE m.id IN (SELECT id FROM complete)
    RETURNING 1
)
SELECT (SELECT count(*) FROM scanned) AS scanned,
       (SELECT created_at FROM scanned ORDER BY created_at DESC, id DESC LIMIT 1) AS last_at,
       (SELECT id FROM scanned ORDER BY created_at DESC, id DESC LIMIT 1) AS last_id,
       (SELECT count(*) FROM messages) AS messages,
       (SELECT count(*) FROM deliveries) AS deliveries,
       (SELECT count(*) FROM attempts) AS attempts
"""

# A brin index on created_at finds the old block ranges; ctid makes the delete hit exactly the
# rows selected (and locked) in the same statement.
PURGE_KEYS = """
WITH expired AS (
    SELECT ctid FROM idempotency_keys WHERE created_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM idempotency_keys k USING expired e WHERE k.ctid = e.ctid AND k.created_at < $1 RETURNING 1
)
SELECT (SELECT count(*) FROM expired) AS selected, (SELECT count(*) FROM deleted) AS deleted
"""

_START = (datetime(1900, 1, 1, tzinfo=UTC), uuid.UUID(int=0))


async def purge_once(db: asyncpg.Pool | asyncpg.Connection, settings: Settings) -> dict[str, int]:
    """One full pass; returns how many messages, deliveries, attempts and idempotency keys went,
    and in how many statements (each its own transaction: `db` must not be inside one)."""
    now = await db.fetchval("SELECT now()")
    delivered_cutoff = now - timedelta(days=settings.webhook_retention_days)
    dead_cutoff = now - timedelta(days=settings.webhook_dead_letter_retention_days)
    keys_cutoff = now - timedelta(seconds=settings.idempotency_key_ttl_seconds)
    batch = settings.purge_batch_size
    counts = {"messages": 0, "deliveries": 0, "attempts": 0, "idempotency_keys": 0, "batches": 0}
    endpoints = [r["id"] for r in await db.fetch("SELECT id FROM webhook_endpoints ORDER BY id")]
    for endpoint_id in endpoints:
        after = _START
        while True:
            row = await db.fetchrow(PURGE_MESSAGES, endpoint_id, delivered_cutoff, dead_cutoff, batch, *after)
            counts["batches"] += 1
            for name in ("messages", "deliveries", "attempts"):
                counts[name] += row[name]
            if row["scanned"] < batch:
                break
            after = (row["last_at"], row["last_id"])
    while True:
        row = await db.fetchrow(PURGE_KEYS, keys_cutoff, batch)
        counts["batches"] += 1
        counts["idempotency_keys"] += row["deleted"]
        if row["selected"] < batch:
            break
    if settings.evidence_retention_days > 0:
        # raw evidence past its retention: the values go, the commitments and the chain stay
        counts["evidence"] = await db.fetchval("SELECT ledger_purge_evidence($1, $2)",
                                               now - timedelta(days=settings.evidence_retention_days),
                                               "worker:evidence_retention_days")
    return counts


async def purge_now(settings: Settings) -> dict[str, int]:
    """One pass on a connection of its own (an hourly pass needs no pool to keep warm)."""
    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url), timeout=settings.db_connect_timeout_seconds,
                                 server_settings={"application_name": "consent-ledger-purge", "timezone": "UTC"})
    try:
        return await purge_once(conn, settings)
    finally:
        await conn.close()


async def run_purger(settings: Settings, stop: asyncio.Event) -> None:
    """Purge every PURGE_INTERVAL_SECONDS until `stop` is set; a database outage is logged and the
    pass retried (sooner), never the end of the loop or of the worker that runs it."""
    while not stop.is_set():
        delay = settings.purge_interval_seconds
        try:
            counts = await purge_now(settings)
            if any(counts.get(k) for k in ("messages", "deliveries", "attempts", "idempotency_keys", "evidence")):
                log.info("purged %s", summary(counts))
        except Exception as exc:  # noqa: BLE001 - a failed pass is retried; the loop must outlive outages
            log.warning("purge failed, retrying: %s: %s", type(exc).__name__, exc)
            delay = min(delay, 60.0)
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            pass


def summary(counts: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value}" for name, value in counts.items())
