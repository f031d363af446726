"""Verify a subject's duties (called by app/consents/verification.py, in its snapshot).

Each duty's records must continue one another (seq from 1, prev_hash, the first linked to the
event that caused it), hash to their stored hash, carry the service's seal, move the status only
along the allowed transitions, and fold into exactly the `duties` row the API reads. A rogue DBA
who marks a duty done by editing `duties`, deletes an embarrassing "overdue" record, or forges a
fulfilment leaves one of these breaks (and the Merkle log checks, shared with events, the rest).
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable, Mapping, Sequence
from itertools import groupby
from typing import Any

from app.core.responses import json_value
from app.duties.records import document, document_hash
from app.proof import keys

RECORDS = "SELECT * FROM duty_records WHERE subject_id = $1 ORDER BY duty_id, seq, id"
DUTIES = "SELECT * FROM duties WHERE subject_id = $1"
# action -> (statuses it may follow, the status it leaves)
TRANSITIONS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "notified": (("due", "overdue"), None), "overdue": (("due",), "overdue"), "sent": (("due", "overdue"), "sent"),
    "done": (("due", "overdue", "sent"), "done"), "cancelled": (("due", "overdue", "sent"), "cancelled"),
}

Add = Callable[..., None]



def _stored(record: Mapping[str, Any]) -> dict[str, Any]:
    return {**record, "detail": json_value(record["detail"])}


def _one(add: Add, records: list[Mapping[str, Any]], events: Mapping[uuid.UUID, Mapping[str, Any]],
         secret: bytes, tenant: str, member: str) -> tuple[str, int, str] | None:
    """Check one duty's records; returns its folded (status, last seq, last hash)."""
    status, previous, previous_time = None, None, None
    for expected, record in enumerate(records, 1):
        if record["seq"] != expected:
            add("missing_duty_record", f"duty {record['duty_id']}: record {expected} is missing or doubled", record)
            return None
        if record["tenant_id"] != tenant or \
                document_hash(document(_stored(record), tenant=tenant, subject_ref=member)) != record["hash"]:
            add("altered_duty", "the duty record's document does not hash to its stored hash", record)
        if not (record["seal"] and hmac.compare_digest(record["seal"], keys.seal(secret, record["hash"]))):
            add("unsealed_duty", "the seal is not the service's: this duty record was not written by it", record)
        if previous_time is not None and record["recorded_at"] < previous_time:
            add("time_reversed", "duty record recorded before the previous one", record)
        if expected == 1:
            cause = events.get(record["cause_event_id"]) if record["cause_event_id"] else None
            if record["action"] != "created" or record["status"] != "due":
                add("altered_duty", "a duty opens with a 'created' record", record)
            if record["cause_event_id"] is not None and (cause is None or cause["hash"] != record["prev_hash"]):
                add("broken_duty_link", "the duty does not link to the hash of the event that caused it", record)
            status = "due"
        else:
            if record["prev_hash"] != previous["hash"]:
                add("broken_duty_link", "prev_hash is not the duty's previous record's hash", record)
            if any(record[k] != previous[k] for k in ("kind", "purpose_key", "processor_key", "due_at", "notify_at")):
                add("altered_duty", "the record names another duty than its first record", record)
            allowed, leaves = TRANSITIONS.get(record["action"], ((), None))
            if status not in allowed or record["status"] != (leaves or status):
                add("altered_duty", f"{record['action']!r} cannot follow status {status!r}", record)
            status = record["status"]
        previous, previous_time = record, record["recorded_at"]
    return (status, previous["seq"], previous["hash"]) if previous else None


def _row_differs(row: Mapping[str, Any], chain: list[Mapping[str, Any]]) -> list[str]:
    """What the API, the scheduler and the permission check read of a duty, against its records:
    the first record says what is owed and by when, the first closing one how it was met."""
    first = chain[0]
    closing = next((r for r in chain if r["action"] in ("sent", "done", "cancelled")), None)
    expected = {
        "tenant_id": first["tenant_id"], "kind": first["kind"], "purpose_key": first["purpose_key"],
        "processor_key": first["processor_key"], "notify_at": first["notify_at"], "due_at": first["due_at"],
        "cause_event_id": first["cause_event_id"], "contents": json_value(first["detail"]),
        "fulfilment": json_value(closing["detail"]) if closing else None,
        "closed_at": closing["recorded_at"] if closing else None,
    }
    return [name for name, value in expected.items()
            if (json_value(row[name]) if name in ("contents", "fulfilment") else row[name]) != value]


def check(add: Add, *, tenant: str, member: str, events: Sequence[Mapping[str, Any]],
          records: Sequence[Mapping[str, Any]], duties: Sequence[Mapping[str, Any]], secret: bytes) -> None:
    """`add(kind, detail, record)` is the report's (its record has id, seq and purpose_key)."""
    by_event = {e["id"]: e for e in events}
    rows = {d["id"]: d for d in duties}
    for duty_id, group in groupby(records, key=lambda r: r["duty_id"]):
        chain = list(group)
        folded = _one(add, chain, by_event, secret, tenant, member)
        row = rows.pop(duty_id, None)
        if folded is None:
            continue
        if row is None:
            add("duty_mismatch", f"duty {duty_id} has records but no current row", seq=folded[1])
        elif (row["status"], row["last_seq"], row["last_hash"]) != folded:
            add("duty_mismatch", f"duty {duty_id}: the current row says {row['status']} (record {row['last_seq']}); "
                                 f"its records say {folded[0]} (record {folded[1]})", seq=row["last_seq"])
        elif differs := _row_differs(row, chain):
            add("duty_mismatch", f"duty {duty_id}: the current row's {', '.join(differs)} differ from its records",
                seq=row["last_seq"])
    for duty_id, row in rows.items():
        add("duty_mismatch", f"duty {duty_id} ({row['kind']}, {row['status']}) has no records", seq=row["last_seq"])
