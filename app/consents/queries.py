"""Reading the ledger: current state, state as of any instant, history pages, chain verification.

Read paths use asyncpg directly for the same reason as writes (see ledger.py): they are the hot
calls of every preference page and processor check.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

import asyncpg

from app.consents import chain
from app.consents.schemas import (
    ChainBreak, ChainVerification, EventActor, EventRead, HistoryPage, NoticeRef, StatePage, StateRead,
)
from app.core.errors import InvalidRequest, NotFound


@dataclass
class Names:
    """Keys to show for the ids an event row carries."""

    purposes: dict[uuid.UUID, str] = field(default_factory=dict)
    collection_points: dict[uuid.UUID, str] = field(default_factory=dict)
    notices: dict[uuid.UUID, tuple[str, str]] = field(default_factory=dict)


def event_read(event: Mapping[str, Any], names: Names | None = None) -> EventRead:
    names = names or Names()
    guardian = event["guardian"]
    if isinstance(guardian, str):
        guardian = json.loads(guardian)
    notice_id = event["notice_id"]
    notice = None
    if notice_id is not None:
        key, version = names.notices.get(notice_id) or (event.get("notice_key"), event.get("notice_version"))
        notice = NoticeRef(id=notice_id, key=key, version=version)
    cp_id = event["collection_point_id"]
    return EventRead(
        id=event["id"], seq=event["seq"],
        purpose=names.purposes.get(event["purpose_id"]) or event.get("purpose_key"),
        action=event["action"], status=event["status"], previous_status=event["previous_status"],
        version=event["version"],
        collection_point=(names.collection_points.get(cp_id) or event.get("collection_point_key")) if cp_id else None,
        notice=notice, disclosure_hash=event["disclosure_hash"], method=event["method"],
        actor=EventActor(type=event["actor_type"], ref=event["actor_ref"], guardian=guardian),
        ip=event["ip"], user_agent=event["user_agent"], occurred_at=event["occurred_at"],
        recorded_at=event["recorded_at"], request_id=event["request_id"], reason=event["reason"],
        prev_hash=event["prev_hash"], hash=event["hash"],
    )


async def subject_row(conn: asyncpg.Connection, tenant: str, external_id: str) -> asyncpg.Record:
    """The subject, or 404; another tenant's subject of the same id is simply not there."""
    row = await conn.fetchrow(
        "SELECT id, last_seq, last_hash FROM subjects WHERE tenant_id = $1 AND external_id = $2", tenant, external_id
    )
    if row is None:
        raise NotFound(f"no subject {external_id!r}")
    return row


CURRENT_STATE = """
SELECT p.key AS purpose, p.kind, p.channel, s.status, s.since, s.version, s.last_event_id,
       s.notice_id, n.key AS notice_key, n.version AS notice_version, cp.key AS collection_point
FROM consent_states s
JOIN purposes p ON p.id = s.purpose_id
LEFT JOIN notices n ON n.id = s.notice_id
LEFT JOIN collection_points cp ON cp.id = s.collection_point_id
WHERE s.subject_id = $1
ORDER BY p.key
"""

# The state at an instant is the last event per purpose recorded at or before it (recorded_at is
# the server's clock, taken under the subject lock, so it follows seq).
STATE_AS_OF = """
SELECT p.key AS purpose, p.kind, p.channel, e.status, e.recorded_at AS since, e.version, e.id AS last_event_id,
       e.notice_id, n.key AS notice_key, n.version AS notice_version, cp.key AS collection_point
FROM (
    SELECT DISTINCT ON (purpose_id) * FROM consent_events
    WHERE subject_id = $1 AND recorded_at <= $2
    ORDER BY purpose_id, seq DESC
) e
JOIN purposes p ON p.id = e.purpose_id
LEFT JOIN notices n ON n.id = e.notice_id
LEFT JOIN collection_points cp ON cp.id = e.collection_point_id
ORDER BY p.key
"""


async def state(conn: asyncpg.Connection, tenant: str, external_id: str, as_of: datetime | None) -> StatePage:
    subject = await subject_row(conn, tenant, external_id)
    if as_of is None:
        rows = await conn.fetch(CURRENT_STATE, subject["id"])
    else:
        rows = await conn.fetch(STATE_AS_OF, subject["id"], as_of)
    return StatePage(subject_id=external_id, as_of=as_of, consents=[
        StateRead(
            purpose=r["purpose"], kind=r["kind"], channel=r["channel"], status=r["status"], since=r["since"],
            version=r["version"], last_event_id=r["last_event_id"], collection_point=r["collection_point"],
            notice=NoticeRef(id=r["notice_id"], key=r["notice_key"], version=r["notice_version"])
            if r["notice_id"] else None,
        )
        for r in rows
    ])


HISTORY = """
SELECT e.*, p.key AS purpose_key, cp.key AS collection_point_key, n.key AS notice_key, n.version AS notice_version
FROM consent_events e
JOIN purposes p ON p.id = e.purpose_id
LEFT JOIN collection_points cp ON cp.id = e.collection_point_id
LEFT JOIN notices n ON n.id = e.notice_id
WHERE e.subject_id = $1 AND e.seq > $2 AND ($3::uuid IS NULL OR e.purpose_id = $3)
ORDER BY e.seq
LIMIT $4
"""


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, value = text.split(":", 1)
        if prefix != "seq" or int(value) < 0:
            raise ValueError
        return int(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest("the cursor is not valid", errors=[
            {"field": "query.cursor", "reason": "use the next_cursor of a previous page"}]) from exc


async def history(
    conn: asyncpg.Connection, tenant: str, external_id: str, *, purpose: str | None, cursor: str | None, limit: int,
) -> HistoryPage:
    after = decode_cursor(cursor)
    subject = await subject_row(conn, tenant, external_id)
    purpose_id = None
    if purpose is not None:
        purpose_id = await conn.fetchval("SELECT id FROM purposes WHERE tenant_id = $1 AND key = $2", tenant, purpose)
        if purpose_id is None:
            raise NotFound(f"no purpose with key {purpose!r}", errors=[{"field": "query.purpose", "reason": "unknown"}])
    rows = await conn.fetch(HISTORY, subject["id"], after, purpose_id, limit + 1)
    items = [event_read(r) for r in rows[:limit]]
    return HistoryPage(subject_id=external_id, items=items,
                       next_cursor=encode_cursor(items[-1].seq) if len(rows) > limit else None)


async def verify(conn: asyncpg.Connection, tenant: str, external_id: str) -> ChainVerification:
    subject = await subject_row(conn, tenant, external_id)
    # Bounded by the head read first, so an append racing this walk is not mistaken for damage.
    events = [dict(r) for r in await conn.fetch(
        "SELECT * FROM consent_events WHERE subject_id = $1 AND seq <= $2 ORDER BY seq",
        subject["id"], subject["last_seq"],
    )]
    broken = chain.find_break(events, subject["last_hash"], subject["last_seq"])
    return ChainVerification(
        subject_id=external_id, valid=broken is None, events_checked=len(events), head_hash=subject["last_hash"],
        first_break=ChainBreak(**broken) if broken else None,
    )
