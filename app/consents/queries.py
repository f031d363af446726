"""Reading the ledger: current state, state as of any instant, history pages, chain verification.

Each read is one statement that also resolves the subject (tenant-scoped), and rows become plain
dicts in the wire shape of `schemas.EventRead` / `schemas.StateRead` (documented there).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

import asyncpg

from app.consents import chain
from app.core.errors import NotFound
from app.core.pagination import decode_cursor, encode_cursor


@dataclass
class Names:
    """Keys to show for the ids an event carries, when the row does not bring them itself."""

    purposes: dict[uuid.UUID, str] = field(default_factory=dict)
    collection_points: dict[uuid.UUID, str] = field(default_factory=dict)
    notices: dict[uuid.UUID, tuple[str, str]] = field(default_factory=dict)


def event_json(event: Mapping[str, Any], names: Names | None = None) -> dict[str, Any]:
    names = names or Names()
    notice_id, cp_id = event["notice_id"], event["collection_point_id"]
    notice = None
    if notice_id is not None:
        key, version = names.notices.get(notice_id) or (event.get("notice_key"), event.get("notice_version"))
        notice = {"id": notice_id, "key": key, "version": version}
    return {
        "id": event["id"], "seq": event["seq"],
        "purpose": names.purposes.get(event["purpose_id"]) or event.get("purpose_key"),
        "action": event["action"], "status": event["status"], "previous_status": event["previous_status"],
        "version": event["version"],
        "collection_point": (names.collection_points.get(cp_id) or event.get("collection_point_key"))
        if cp_id else None,
        "notice": notice, "disclosure_hash": event["disclosure_hash"], "method": event["method"],
        "actor": {"type": event["actor_type"], "ref": event["actor_ref"], "guardian": event["guardian"]},
        "ip": event["ip"], "user_agent": event["user_agent"], "occurred_at": event["occurred_at"],
        "recorded_at": event["recorded_at"], "request_id": event["request_id"], "reason": event["reason"],
        "prev_hash": event["prev_hash"], "hash": event["hash"],
    }


def _not_found(external_id: str) -> NotFound:
    return NotFound(f"no subject {external_id!r}")


def _state_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "purpose": row["purpose"], "kind": row["kind"], "channel": row["channel"], "status": row["status"],
        "since": row["since"], "version": row["version"],
        "notice": {"id": row["notice_id"], "key": row["notice_key"], "version": row["notice_version"]}
        if row["notice_id"] else None,
        "collection_point": row["collection_point"], "last_event_id": row["last_event_id"],
    }


# One row per state, or one all-null row for a subject without any: both say the subject exists.
CURRENT_STATE = """
SELECT p.key AS purpose, p.kind, p.channel, s.status, s.since, s.version, s.last_event_id,
       s.notice_id, n.key AS notice_key, n.version AS notice_version, cp.key AS collection_point
FROM subjects sub
LEFT JOIN consent_states s ON s.subject_id = sub.id
LEFT JOIN purposes p ON p.id = s.purpose_id
LEFT JOIN notices n ON n.id = s.notice_id
LEFT JOIN collection_points cp ON cp.id = s.collection_point_id
WHERE sub.tenant_id = $1 AND sub.external_id = $2
ORDER BY p.key
"""

# The state at an instant is the last event per purpose recorded at or before it (recorded_at is
# the database clock taken under the subject lock, so it follows seq).
STATE_AS_OF = """
SELECT p.key AS purpose, p.kind, p.channel, e.status, e.recorded_at AS since, e.version, e.id AS last_event_id,
       e.notice_id, n.key AS notice_key, n.version AS notice_version, cp.key AS collection_point
FROM subjects sub
LEFT JOIN LATERAL (
    SELECT DISTINCT ON (purpose_id) * FROM consent_events
    WHERE subject_id = sub.id AND recorded_at <= $3
    ORDER BY purpose_id, seq DESC
) e ON true
LEFT JOIN purposes p ON p.id = e.purpose_id
LEFT JOIN notices n ON n.id = e.notice_id
LEFT JOIN collection_points cp ON cp.id = e.collection_point_id
WHERE sub.tenant_id = $1 AND sub.external_id = $2
ORDER BY p.key
"""


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
SELECT e.*, p.key AS purpose_key, cp.key AS collection_point_key, n.key AS notice_key,
       n.version AS notice_version, fp.id AS filter_purpose_id
FROM subjects sub
LEFT JOIN purposes fp ON $4::text IS NOT NULL AND fp.tenant_id = sub.tenant_id AND fp.key = $4
LEFT JOIN LATERAL (
    SELECT * FROM consent_events ev
    WHERE ev.subject_id = sub.id AND ev.seq > $3 AND ($4::text IS NULL OR ev.purpose_id = fp.id)
    ORDER BY ev.seq
    LIMIT $5
) e ON true
LEFT JOIN purposes p ON p.id = e.purpose_id
LEFT JOIN collection_points cp ON cp.id = e.collection_point_id
LEFT JOIN notices n ON n.id = e.notice_id
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
    items = [event_json(r) for r in events[:limit]]
    return {"subject_id": external_id, "items": items,
            "next_cursor": encode_cursor(f"seq:{items[-1]['seq']}") if len(events) > limit else None}


async def verify(conn: asyncpg.Pool | asyncpg.Connection, tenant: str, external_id: str) -> dict[str, Any]:
    subject = await conn.fetchrow(
        "SELECT id, last_seq, last_hash FROM subjects WHERE tenant_id = $1 AND external_id = $2", tenant, external_id
    )
    if subject is None:
        raise _not_found(external_id)
    # Bounded by the head read first, so an append racing this walk is not mistaken for damage.
    events = [dict(r) for r in await conn.fetch(
        "SELECT * FROM consent_events WHERE subject_id = $1 AND seq <= $2 ORDER BY seq",
        subject["id"], subject["last_seq"],
    )]
    broken = chain.find_break(events, subject["last_hash"], subject["last_seq"])
    return {"subject_id": external_id, "valid": broken is None, "events_checked": len(events),
            "head_hash": subject["last_hash"], "first_break": broken}
