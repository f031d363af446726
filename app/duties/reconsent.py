"""Fresh consent after a material change of wording (PIPA Art. 15(2), 17(2); docs/duties.md).

Once a material change's `effective_from` has come, the worker walks the subjects whose consent to
that purpose was granted on the wording before it (their last grant recorded before the change),
a batch per transaction, keyset on the subject: each gets a `reconsent` duty linked to that grant,
and a `consent.reconsent_required` message goes to the endpoints that hear of the purpose (as for
any consent change). A new grant on the new wording closes the duty, a withdrawal cancels it
(app/duties/consequences.py); until then the permission check denies (reconsent_required).
Progress is kept in reconsent_runs, so a restart resumes where it stopped.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from app.consents.chain import format_time
from app.core.responses import dumps
from app.duties import clocks
from app.duties.records import INSERT, Builder
from app.webhooks import outbox

TYPE = "consent.reconsent_required"
DAYS = 30  # the tenant's time to ask again (no statutory deadline: processing waits until then)
DUE = """
SELECT c.*, p.kind, p.channel, p.category, r.last_subject, coalesce(r.subjects, 0) AS done
FROM purpose_wording_changes c
JOIN purposes p ON p.id = c.purpose_id
LEFT JOIN reconsent_runs r ON r.change_id = c.id
WHERE c.material AND c.effective_from <= now() AND p.legal_basis = 'consent' AND r.finished_at IS NULL
ORDER BY c.effective_from, c.id LIMIT 1
"""
# The subjects granted on the wording before the change, after the keyset; their last grant.
AFFECTED = """
SELECT cs.subject_id, s.external_id, g.id, g.hash, g.recorded_at, g.occurred_at
FROM consent_states cs
JOIN subjects s ON s.id = cs.subject_id
CROSS JOIN LATERAL (
    SELECT e.id, e.hash, e.recorded_at, e.occurred_at FROM consent_events e
    WHERE e.subject_id = cs.subject_id AND e.purpose_id = cs.purpose_id AND e.action = 'granted'
    ORDER BY e.seq DESC LIMIT 1
) g
WHERE cs.purpose_id = $1 AND cs.status = 'granted' AND g.recorded_at < $2 AND cs.subject_id > $3
ORDER BY cs.subject_id LIMIT $4
"""
PROGRESS = """
INSERT INTO reconsent_runs (change_id, last_subject, subjects, finished_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (change_id) DO UPDATE SET last_subject = EXCLUDED.last_subject, subjects = EXCLUDED.subjects,
    finished_at = EXCLUDED.finished_at
"""
# To the endpoints that hear of the purpose's consent changes, as a consent message would go.
ENQUEUE = outbox.enqueue_unordered(outbox.MATCH.format(ev="m"))
NIL = uuid.UUID(int=0)


async def step(conn: asyncpg.Connection, secret: bytes, limit: int) -> int | None:
    """One batch of the oldest unfinished material change; returns the subjects it reached (None:
    no change left to apply)."""
    async with conn.transaction():
        # one worker at a time walks the changes (another one skips this round): never twice
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtextextended('consent-ledger reconsent', 0))"):
            return None
        change = await conn.fetchrow(DUE)
        if change is None:
            return None
        now = await conn.fetchval("SELECT clock_timestamp()")
        rows = await conn.fetch(AFFECTED, change["purpose_id"], change["created_at"],
                                change["last_subject"] or NIL, limit)
        records: list[dict[str, Any]] = []
        messages: list[dict[str, Any]] = []
        due = clocks.days_after(change["effective_from"], DAYS)
        for row in rows:
            builder = Builder(tenant=change["tenant_id"], subject_ref=row["external_id"], secret=secret, now=now)
            cause = {"id": row["id"], "hash": row["hash"]}
            doc = builder.create(
                subject_id=row["subject_id"], kind="reconsent", purpose_key=change["purpose_key"],
                notify_at=change["effective_from"], due_at=due, cause=cause,
                contents={"purpose": change["purpose_key"], "change_id": str(change["id"]),
                          "wording_before": change["disclosure_hash_before"],
                          "wording_now": change["disclosure_hash_after"], "reason": change["reason"],
                          "granted_at": format_time(row["occurred_at"] or row["recorded_at"]),
                          "article": "개인정보 보호법 제15조제2항, 제17조제2항"})
            records += builder.rows
            data = {"tenant": change["tenant_id"], "subject_id": row["external_id"], "purpose": change["purpose_key"],
                    "channel": change["channel"], "category": change["category"], "status": "reconsent_required",
                    "since": format_time(change["effective_from"]), "duty_id": doc["duty_id"],
                    "event_id": str(row["id"])}
            messages.append({"id": uuid.uuid4(), "tenant": change["tenant_id"], "subject_ref": row["external_id"],
                             "type": TYPE, "purpose": change["purpose_key"], "kind": change["kind"],
                             "channel": change["channel"], "category": change["category"],
                             "body": outbox.body(TYPE, now, data)})
        if records:
            await conn.execute(INSERT, dumps(records))
            await conn.execute(ENQUEUE, dumps(messages))
        finished = now if len(rows) < limit else None
        await conn.execute(PROGRESS, change["id"], rows[-1]["subject_id"] if rows else change["last_subject"],
                           change["done"] + len(rows), finished)
        return len(rows)
