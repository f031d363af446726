"""Reading the ledger: current state, state as of any instant, history pages, chain verification.

Each read is one statement that also resolves the subject (tenant-scoped), and rows become plain
dicts in the wire shape of `schemas.EventRead` / `schemas.StateRead` (documented there).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

import asyncpg

from app.consents import chain
from app.core.errors import NotFound
from app.core.pagination import decode_cursor, encode_cursor


def event_json(event: Mapping[str, Any], *, tenant: str, subject_ref: str) -> dict[str, Any]:
    """An event as the API and exports print it: its document (what its hash covers) and the hash."""
    return {**chain.document(event, tenant=tenant, subject_ref=subject_ref), "hash": event["hash"]}


def _not_found(external_id: str) -> NotFound:
    return NotFound(f"no subject {external_id!r}")


def _state_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "purpose": row["purpose"], "kind": row["kind"], "channel": row["channel"], "status": row["status"],
        "since": row["since"], "version": row["version"],
        "notice": {"id": row["notice_id"], "key": row["notice_key"], "version": row["notice_version"]}
        if row["notice_id"] else None,
        "collection_point": row["collection_point"], "last_event_id": row["last_event_id"],
        "next_duty": {"id": row["duty_id"], "kind": row["duty_kind"], "status": row["duty_status"],
                      "notify_at": row["duty_notify_at"], "due_at": row["duty_due_at"]} if row["duty_id"] else None,
    }


# The purpose's next open duty (docs/duties.md) at {at}: its own (reconfirmation, suppression ...) or
# the result notice of an ad act on it, the earliest deadline first.
NEXT_DUTY = """
LEFT JOIN LATERAL (
    SELECT d.id AS duty_id, d.kind AS duty_kind, d.notify_at AS duty_notify_at, d.due_at AS duty_due_at,
           CASE WHEN d.due_at <= {at} THEN 'overdue' ELSE 'due' END AS duty_status
    FROM duties d
    WHERE d.subject_id = sub.id AND d.created_at <= {at} AND (d.closed_at IS NULL OR d.closed_at > {at})
      AND (d.purpose_key = p.key OR (d.purpose_key IS NULL
                                     AND d.contents -> 'acts' @> jsonb_build_array(jsonb_build_object('purpose', p.key))))
    ORDER BY d.due_at, d.id LIMIT 1
) nd ON p.key IS NOT NULL
"""


# One row per state, or one all-null row for a subject without any: both say the subject exists.
CURRENT_STATE = """
SELECT p.key AS purpose, p.kind, p.channel, s.status, s.since, s.version, s.last_event_id,
       s.notice_id, n.key AS notice_key, n.version AS notice_version, cp.key AS collection_point, nd.*
FROM subjects sub
LEFT JOIN consent_states s ON s.subject_id = sub.id
LEFT JOIN purposes p ON p.id = s.purpose_id
LEFT JOIN notices n ON n.id = s.notice_id
LEFT JOIN collection_points cp ON cp.id = s.collection_point_id
{next_duty}
WHERE sub.tenant_id = $1 AND sub.external_id = $2
ORDER BY p.key
""".format(next_duty=NEXT_DUTY.format(at="now()"))

# The state at an instant is the last event per purpose recorded at or before it (recorded_at is
# the database clock taken under the subject lock, so it follows seq).
STATE_AS_OF = """
SELECT p.key AS purpose, p.kind, p.channel, e.status, e.recorded_at AS since, e.version, e.id AS last_event_id,
       e.notice_id, n.key AS notice_key, n.version AS notice_version, cp.key AS collection_point, nd.*
FROM subjects sub
LEFT JOIN LATERAL (
    SELECT DISTINCT ON (purpose_id) * FROM consent_events
    WHERE subject_id = sub.id AND recorded_at <= $3
    ORDER BY purpose_id, seq DESC
) e ON true
LEFT JOIN purposes p ON p.id = e.purpose_id
LEFT JOIN notices n ON n.id = e.notice_id
LEFT JOIN collection_points cp ON cp.id = e.collection_point_id
{next_duty}
WHERE sub.tenant_id = $1 AND sub.external_id = $2
ORDER BY p.key
""".format(next_duty=NEXT_DUTY.format(at="$3"))


async def state(conn: asyncpg.Pool | asyncpg.Connection, tenant: str, external_id: str, as_of: datetime | None) -> dict[str, Any]:
    if as_of is None:
        rows = await conn.fetch(CURRENT_STATE, tenant, external_id)
    else:
        rows = await conn.fetch(STATE_AS_OF, tenant, external_id, as_of)
    if not rows:
        raise _not_found(external_id)
    return {"subject_id": external_id, "as_of": as_of,
            "consents": [_state_json(r) for r in rows if r["purpose"] is not None]}


# The subject row comes first (`sub` with a NULL event when the page is empty), so one statement
# tells "no such subject" from "no more events".
HISTORY = """
SELECT e.*, fp.id AS filter_purpose_id
FROM subjects sub
LEFT JOIN purposes fp ON $4::text IS NOT NULL AND fp.tenant_id = sub.tenant_id AND fp.key = $4
LEFT JOIN LATERAL (
    SELECT * FROM consent_events ev
    WHERE ev.subject_id = sub.id AND ev.seq > $3 AND ($4::text IS NULL OR ev.purpose_id = fp.id)
    ORDER BY ev.seq
    LIMIT $5
) e ON true
WHERE sub.tenant_id = $1 AND sub.external_id = $2
ORDER BY e.seq
"""


def _seq(parts: list[str]) -> int:
    prefix, value = parts[0].split(":", 1)
    if len(parts) != 1 or prefix != "seq" or int(value) < 0:
        raise ValueError
    return int(value)


async def history(
    conn: asyncpg.Pool | asyncpg.Connection, tenant: str, external_id: str, *, purpose: str | None, cursor: str | None, limit: int,
) -> dict[str, Any]:
    after = decode_cursor(cursor, _seq) if cursor else 0
    rows = await conn.fetch(HISTORY, tenant, external_id, after, purpose, limit + 1)
    if not rows:
        raise _not_found(external_id)
    if purpose is not None and rows[0]["filter_purpose_id"] is None:
        raise NotFound(f"no purpose with key {purpose!r}", errors=[{"field": "query.purpose", "reason": "unknown"}])
    events = [r for r in rows if r["id"] is not None]
    items = [event_json(r, tenant=tenant, subject_ref=external_id) for r in events[:limit]]
    return {"subject_id": external_id, "items": items,
            "next_cursor": encode_cursor(f"seq:{items[-1]['seq']}") if len(events) > limit else None}
