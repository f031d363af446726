"""Appending to the ledger: lock the subject, chain and seal the events, write them at once.

Hot path: plain asyncpg (see app/core/db.py, LedgerWriter); the caller owns the transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from app.consents import chain
from app.consents.chain import CHAIN_VERSION
from app.core.responses import dumps
from app.proof import keys
from app.duties import records
from app.webhooks import outbox


@dataclass
class Head:
    """The locked subject: where its chain ends and the server time taken under the lock (never
    earlier than its last event's)."""

    id: uuid.UUID
    last_seq: int
    last_hash: str | None
    now: datetime
    created: bool = False


# A SECURITY DEFINER function (alembic 0004): the runtime role may not update subjects itself.
LOCK = "SELECT id, last_seq, last_hash, now, created FROM ledger_lock_subject($1, $2, $3)"


async def lock_subject(conn: asyncpg.Connection, tenant: str, external_id: str, *, create: bool) -> Head | None:
    """Serialise writers of one subject (invariant 7); other subjects are not blocked."""
    row = await conn.fetchrow(LOCK, tenant, external_id, create)
    if row is None:
        return None
    return Head(id=row["id"], last_seq=row["last_seq"], last_hash=row["last_hash"],
                now=row["now"], created=row["created"])


@dataclass
class NoticeShown:
    id: uuid.UUID
    key: str
    version: str
    sha256: str
    superseded_at: datetime | None = None


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
    collection_point_key: str | None = None
    notice: NoticeShown | None = None
    reason: str | None = None


@dataclass
class Change:
    purpose_id: uuid.UUID
    purpose_key: str
    action: str
    status: str
    previous_status: str | None
    previous_version: int
    disclosure_hash: str | None = None


# Events only: the statement trigger behind this insert (alembic 0004) checks the batch against
# the subject's head and moves the head, the current state and the log queue. The evidence row,
# the receipt and the webhook messages (outbox, invariant 8) go in the same statement: one round
# trip, and all or nothing (foreign keys are checked and the trigger runs at the statement's end).
# Locks: the subject row is already held (lock_subject); the endpoints' key-share locks come next,
# then the trigger's state rows: the order docs/proof.md gives.
# The statement's parameters, in order; the SQL names them. The events and the webhook messages
# travel as one JSON array each, not a dozen arrays: asyncpg encodes an array parameter at ~13 us
# of the API's CPU each (measured), PostgreSQL reads the JSON once.
_PARAMS = ("events", "messages", "tenant", "subject_id", "subject_ref", "evidence_id", "ip", "user_agent", "guardian",
           "commitment", "now", "collection_point_id", "collection_point_key", "notice_id", "notice_key",
           "notice_version", "notice_sha256", "notice_superseded_at", "method", "actor_type", "actor_ref",
           "occurred_at", "request_id", "reason", "receipt_id", "jws", "duty_records")
_P = {name: f"${i}" for i, name in enumerate(_PARAMS, 1)}
EVENT_COLUMNS = ("id", "seq", "purpose_id", "purpose_key", "version", "action", "status", "previous_status",
                 "disclosure_hash", "prev_hash", "hash", "seal")
APPEND = """
WITH batch AS MATERIALIZED (
    SELECT * FROM json_to_recordset({events}::text::json) AS u(
        id uuid, seq bigint, purpose_id uuid, purpose_key text, version int, action text, status text,
        previous_status text, disclosure_hash text, prev_hash text, hash text, seal text)
), evidence AS (
    INSERT INTO consent_evidence (id, tenant_id, subject_id, ip, user_agent, guardian, commitment, created_at)
    SELECT {evidence_id}, {tenant}, {subject_id}, {ip}, {user_agent}, {guardian}::jsonb, {commitment}, {now}
    WHERE {evidence_id}::uuid IS NOT NULL
    RETURNING 1
), receipt AS (
    INSERT INTO receipts (id, tenant_id, subject_id, request_id, event_ids, jws, created_at)
    SELECT {receipt_id}, {tenant}, {subject_id}, {request_id}, (SELECT array_agg(id ORDER BY seq) FROM batch),
           {jws}, {now}
    WHERE {receipt_id}::uuid IS NOT NULL
    RETURNING 1
), duty_records AS (
    {duty_insert}
    RETURNING 1
), {outbox}
INSERT INTO consent_events (
    id, seq, purpose_id, purpose_key, version, action, status, previous_status, disclosure_hash, prev_hash, hash,
    seal, tenant_id, subject_id, evidence_id, evidence_commitment, recorded_at, collection_point_id,
    collection_point_key, notice_id, notice_key, notice_version, notice_sha256, notice_superseded_at, method,
    actor_type, actor_ref, occurred_at, request_id, reason, chain_version
)
SELECT b.*, {tenant}, {subject_id}, {evidence_id}, {commitment}, {now}, {collection_point_id},
       {collection_point_key}, {notice_id}, {notice_key}, {notice_version}, {notice_sha256}, {notice_superseded_at},
       {method}, {actor_type}, {actor_ref}, {occurred_at}, {request_id}, {reason}, 2
FROM batch b ORDER BY b.seq
""".format(**_P, duty_insert=records.insert_cte(_P["duty_records"]), outbox=outbox.enqueue_ctes(messages=_P["messages"], tenant=_P["tenant"],
                                             subject_ref=_P["subject_ref"], subject_id=_P["subject_id"]))


def _evidence_row(secret: bytes, evidence: Evidence) -> tuple[uuid.UUID | None, str | None]:
    if evidence.ip is None and evidence.user_agent is None and evidence.guardian is None:
        return None, None
    evidence_id = uuid.uuid4()
    return evidence_id, keys.commitment(secret, {
        "id": str(evidence_id), "ip": evidence.ip, "user_agent": evidence.user_agent, "guardian": evidence.guardian,
    })


@dataclass
class Batch:
    """Events chained onto a head, not yet written: `printed` is what the API shows (and hashes)."""

    head: Head
    request_id: uuid.UUID
    evidence: Evidence
    occurred_at: datetime
    evidence_id: uuid.UUID | None
    commitment: str | None
    rows: list[dict[str, Any]]
    printed: list[dict[str, Any]]


def chain_onto(
    head: Head, *, tenant: str, subject_ref: str, changes: list[Change], evidence: Evidence,
    request_id: uuid.UUID, secret: bytes,
) -> Batch:
    """Chain and seal `changes` onto the subject's head (nothing is written yet)."""
    occurred_at = evidence.occurred_at or head.now
    evidence_id, commitment = _evidence_row(secret, evidence)
    notice = evidence.notice
    rows: list[dict[str, Any]] = []
    printed: list[dict[str, Any]] = []
    prev_hash, seq = head.last_hash, head.last_seq
    for change in changes:
        seq += 1
        row = {
            "id": uuid.uuid4(), "seq": seq, "request_id": request_id, "chain_version": CHAIN_VERSION,
            "purpose_id": change.purpose_id, "purpose_key": change.purpose_key,
            "version": change.previous_version + 1, "action": change.action, "status": change.status,
            "previous_status": change.previous_status, "collection_point_key": evidence.collection_point_key,
            "notice_id": notice.id if notice else None, "notice_key": notice.key if notice else None,
            "notice_version": notice.version if notice else None, "notice_sha256": notice.sha256 if notice else None,
            "notice_superseded_at": notice.superseded_at if notice else None,
            "disclosure_hash": change.disclosure_hash, "method": evidence.method, "actor_type": evidence.actor_type,
            "actor_ref": evidence.actor_ref, "evidence_id": evidence_id, "evidence_commitment": commitment,
            "occurred_at": occurred_at, "recorded_at": head.now, "reason": evidence.reason, "prev_hash": prev_hash,
        }
        doc = chain.document(row, tenant=tenant, subject_ref=subject_ref)
        row["hash"] = prev_hash = chain.document_hash(doc)
        row["seal"] = keys.seal(secret, row["hash"])
        rows.append(row)
        printed.append({**doc, "hash": row["hash"]})
    return Batch(head=head, request_id=request_id, evidence=evidence, occurred_at=occurred_at,
                 evidence_id=evidence_id, commitment=commitment, rows=rows, printed=printed)


async def write(conn: asyncpg.Connection, tenant: str, subject_ref: str, batch: Batch,
                receipt: tuple[uuid.UUID, str] | None = None,
                purposes: dict[str, outbox.Purpose] | None = None, duties: records.Builder | None = None,
                opened: dict[str, list[dict[str, Any]]] | None = None) -> None:
    """One statement: the evidence row, the events (the trigger moves head, state and log queue),
    the receipt `(id, jws)` if any, the webhook messages for the events' changes when `purposes`
    maps their purpose keys to outbox.Purpose (outbox.rows; `opened` names the duties each event
    opened), and the duty records `duties` holds (their trigger opens and moves the duties)."""
    messages = (outbox.rows(tenant=tenant, subject_ref=subject_ref, events=batch.printed, purposes=purposes,
                            duties=opened)
                if purposes is not None else [])
    # JSON text, whatever codecs the connection has (the API's decode json; a bare one does not)
    head, evidence, notice, rows = batch.head, batch.evidence, batch.evidence.notice, batch.rows
    await conn.execute(
        APPEND, dumps([{c: r[c] for c in EVENT_COLUMNS} for r in rows]), dumps(messages), tenant, head.id, subject_ref,
        batch.evidence_id, evidence.ip, evidence.user_agent, evidence.guardian, batch.commitment, head.now,
        evidence.collection_point_id, evidence.collection_point_key, notice.id if notice else None,
        notice.key if notice else None, notice.version if notice else None, notice.sha256 if notice else None,
        notice.superseded_at if notice else None, evidence.method, evidence.actor_type, evidence.actor_ref,
        batch.occurred_at, batch.request_id, evidence.reason, receipt[0] if receipt else None,
        receipt[1] if receipt else None, duties.json() if duties is not None and duties.rows else "[]",
    )
    head.last_seq, head.last_hash = rows[-1]["seq"], rows[-1]["hash"]


# The subject's states, and (a last row without a purpose) the purposes whose consent must be given
# again after a material change of wording (open reconsent duties: docs/duties.md).
STATES = """
SELECT purpose_id, status, version, NULL::text[] AS reconsent FROM consent_states WHERE subject_id = $1
UNION ALL
SELECT NULL, NULL, NULL, array_agg(purpose_key) FROM duties
WHERE subject_id = $1 AND kind = 'reconsent' AND status IN ('due', 'overdue') HAVING count(*) > 0
"""


async def current_states(conn: asyncpg.Connection, subject_id: uuid.UUID,
                         ) -> tuple[dict[uuid.UUID, tuple[str, int]], frozenset[str]]:
    """(purpose id -> (status, version), the purpose keys awaiting fresh consent)."""
    rows = await conn.fetch(STATES, subject_id)
    reconsent = frozenset(k for r in rows if r["purpose_id"] is None for k in r["reconsent"])
    return {r["purpose_id"]: (r["status"], r["version"]) for r in rows if r["purpose_id"] is not None}, reconsent
