"""Appending to the ledger: lock the subject, chain the events, write events + state at once.

Hot path: plain asyncpg (see app/core/db.py, LedgerWriter); the caller owns the transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from app.consents.chain import event_hash


@dataclass
class Head:
    """The locked subject: where its chain ends and the server time taken under the lock."""

    id: uuid.UUID
    last_seq: int
    last_hash: str | None
    now: datetime
    created: bool = False


LOCK_OR_CREATE = """
INSERT INTO subjects (id, tenant_id, external_id) VALUES (gen_random_uuid(), $1, $2)
ON CONFLICT (tenant_id, external_id) DO UPDATE SET last_seq = subjects.last_seq
RETURNING id, last_seq, last_hash, clock_timestamp() AS now, (xmax = 0) AS created
"""
LOCK_EXISTING = """
SELECT id, last_seq, last_hash, clock_timestamp() AS now, false AS created
FROM subjects WHERE tenant_id = $1 AND external_id = $2 FOR UPDATE
"""


async def lock_subject(conn: asyncpg.Connection, tenant: str, external_id: str, *, create: bool) -> Head | None:
    """Serialise writers of one subject (invariant 7); other subjects are not blocked."""
    row = await conn.fetchrow(LOCK_OR_CREATE if create else LOCK_EXISTING, tenant, external_id)
    if row is None:
        return None
    return Head(id=row["id"], last_seq=row["last_seq"], last_hash=row["last_hash"],
                now=row["now"], created=row["created"])


@dataclass
class Evidence:
    method: str
    actor_type: str
    actor_ref: str | None
    guardian: dict[str, Any] | None
    ip: str | None
    user_agent: str | None
    occurred_at: datetime | None
    collection_point_id: uuid.UUID | None = None
    notice_id: uuid.UUID | None = None
    reason: str | None = None


@dataclass
class Change:
    purpose_id: uuid.UUID
    action: str
    status: str
    previous_status: str | None
    previous_version: int
    disclosure_hash: str | None = None


APPEND = """
WITH input AS (
    SELECT * FROM unnest(
        $1::uuid[], $2::bigint[], $3::uuid[], $4::int[], $5::text[], $6::text[], $7::text[], $8::text[],
        $9::text[], $10::text[]
    ) AS u(id, seq, purpose_id, version, action, status, previous_status, disclosure_hash, prev_hash, hash)
), events AS (
    INSERT INTO consent_events (
        id, tenant_id, subject_id, seq, purpose_id, version, action, status, previous_status,
        collection_point_id, notice_id, disclosure_hash, method, actor_type, actor_ref, guardian,
        ip, user_agent, occurred_at, recorded_at, request_id, reason, prev_hash, hash
    )
    SELECT id, $11, $12, seq, purpose_id, version, action, status, previous_status,
           $13, $14, disclosure_hash, $15, $16, $17, $18::jsonb,
           $19, $20, $21, $22, $23, $24, prev_hash, hash
    FROM input
    RETURNING 1
), states AS (
    INSERT INTO consent_states (
        subject_id, purpose_id, tenant_id, status, version, since, last_event_id, notice_id, collection_point_id
    )
    SELECT $12, purpose_id, $11, status, version, $22, id, $14, $13 FROM input
    ON CONFLICT (subject_id, purpose_id) DO UPDATE SET
        status = EXCLUDED.status, version = EXCLUDED.version, since = EXCLUDED.since,
        last_event_id = EXCLUDED.last_event_id, notice_id = EXCLUDED.notice_id,
        collection_point_id = EXCLUDED.collection_point_id
    RETURNING 1
)
UPDATE subjects SET last_seq = $25, last_hash = $26 WHERE id = $12
"""


async def append(
    conn: asyncpg.Connection, *, tenant: str, head: Head, changes: list[Change], evidence: Evidence,
    request_id: uuid.UUID,
) -> list[dict[str, Any]]:
    """Chain `changes` onto the subject's head and write events, state and head in one statement.

    (PostgreSQL runs every data-modifying CTE to completion even when the outer query ignores it.)
    """
    occurred_at = evidence.occurred_at or head.now
    events: list[dict[str, Any]] = []
    prev_hash, seq = head.last_hash, head.last_seq
    for change in changes:
        seq += 1
        event = {
            "id": uuid.uuid4(), "tenant_id": tenant, "subject_id": head.id, "seq": seq,
            "purpose_id": change.purpose_id, "version": change.previous_version + 1, "action": change.action,
            "status": change.status, "previous_status": change.previous_status,
            "collection_point_id": evidence.collection_point_id, "notice_id": evidence.notice_id,
            "disclosure_hash": change.disclosure_hash, "method": evidence.method,
            "actor_type": evidence.actor_type, "actor_ref": evidence.actor_ref, "guardian": evidence.guardian,
            "ip": evidence.ip, "user_agent": evidence.user_agent, "occurred_at": occurred_at,
            "recorded_at": head.now, "request_id": request_id, "reason": evidence.reason, "prev_hash": prev_hash,
        }
        event["hash"] = prev_hash = event_hash(event)
        events.append(event)
    columns = ("id", "seq", "purpose_id", "version", "action", "status", "previous_status", "disclosure_hash",
               "prev_hash", "hash")
    arrays = [[e[c] for e in events] for c in columns]
    await conn.execute(
        APPEND, *arrays, tenant, head.id, evidence.collection_point_id, evidence.notice_id, evidence.method,
        evidence.actor_type, evidence.actor_ref, evidence.guardian, evidence.ip, evidence.user_agent, occurred_at,
        head.now, request_id, evidence.reason, seq, prev_hash,
    )
    head.last_seq, head.last_hash = seq, prev_hash
    return events


async def current_states(conn: asyncpg.Connection, subject_id: uuid.UUID) -> dict[uuid.UUID, tuple[str, int]]:
    rows = await conn.fetch("SELECT purpose_id, status, version FROM consent_states WHERE subject_id = $1",
                            subject_id)
    return {r["purpose_id"]: (r["status"], r["version"]) for r in rows}
