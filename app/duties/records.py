"""Duty records: the evidence of each duty, hash-chained per duty and sealed like events.

A record's hash is SHA-256 over the RFC 8785 form of its *document* (what the API and bundles print
for it, minus `hash`), as for events (app/consents/chain.py). The first record of a duty links to
the hash of the event that caused it (`prev_hash`, `cause_event_id`), so a duty cannot be made up
for, or detached from, an act in the subject's chain; later records link to the previous record.
Each record also enters the tenant's Merkle log, so signed checkpoints cover duties and their
fulfilment (docs/duties.md). Details hold strings, integers, booleans and nulls only (no floats):
their JSONB copy prints back to the same canonical form.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

import asyncpg

from app.consents.chain import format_time
from app.core.hashing import canonical_document, sha256_hex
from app.core.responses import dumps
from app.duties.models import RECORD_VERSION
from app.proof import keys

COLUMNS = ("id", "duty_id", "tenant_id", "subject_id", "seq", "kind", "purpose_key", "processor_key", "action",
           "status", "notify_at", "due_at", "detail", "cause_event_id", "recorded_at", "record_version",
           "prev_hash", "hash", "seal")
_TYPES = {"id": "uuid", "duty_id": "uuid", "subject_id": "uuid", "seq": "int", "notify_at": "timestamptz",
          "due_at": "timestamptz", "detail": "jsonb", "cause_event_id": "uuid", "recorded_at": "timestamptz",
          "record_version": "int"}
_RECORDSET = ", ".join(f"{c} {_TYPES.get(c, 'text')}" for c in COLUMNS)


def insert_cte(param: str) -> str:
    """The records of a JSON array parameter inserted, as a CTE body (the ledger's append carries it,
    app/consents/ledger.py) or a statement of its own (INSERT)."""
    return (f"INSERT INTO duty_records ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} "
            f"FROM json_to_recordset({param}::text::json) AS r({_RECORDSET})")


INSERT = insert_cte("$1")


def document(record: Mapping[str, Any], *, tenant: str, subject_ref: str) -> dict[str, Any]:
    """The record as printed, from its stored columns (the member id from the subject row)."""
    return {
        "record": "duty", "record_version": record["record_version"], "tenant": tenant, "subject_id": subject_ref,
        "id": str(record["id"]), "duty_id": str(record["duty_id"]), "seq": record["seq"], "kind": record["kind"],
        "purpose": record["purpose_key"], "processor": record["processor_key"], "action": record["action"],
        "status": record["status"], "notify_at": format_time(record["notify_at"]),
        "due_at": format_time(record["due_at"]), "detail": record["detail"],
        "cause_event_id": None if record["cause_event_id"] is None else str(record["cause_event_id"]),
        "recorded_at": format_time(record["recorded_at"]), "prev_hash": record["prev_hash"],
    }


def document_hash(doc: Mapping[str, Any]) -> str:
    return sha256_hex(canonical_document({k: v for k, v in doc.items() if k != "hash"}))


@dataclass
class Head:
    """Where a duty's chain ends: enough to append the next record."""

    duty_id: uuid.UUID
    subject_id: uuid.UUID
    kind: str
    purpose_key: str | None
    processor_key: str | None
    notify_at: datetime
    due_at: datetime
    status: str
    last_seq: int
    last_hash: str | None
    updated_at: datetime | None = None  # its last record's time: the next may not be earlier

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Head:
        return cls(duty_id=row["id"], subject_id=row["subject_id"], kind=row["kind"], purpose_key=row["purpose_key"],
                   processor_key=row["processor_key"], notify_at=row["notify_at"], due_at=row["due_at"],
                   status=row["status"], last_seq=row["last_seq"], last_hash=row["last_hash"],
                   updated_at=row["updated_at"])


class Builder:
    """Sealed records for one statement (one per duty): new duties and next records of open ones."""

    def __init__(self, *, tenant: str, subject_ref: str, secret: bytes, now: datetime) -> None:
        self.tenant, self.subject_ref, self.secret, self.now = tenant, subject_ref, secret, now
        self.rows: list[dict[str, Any]] = []
        self.printed: list[dict[str, Any]] = []

    def _add(self, row: dict[str, Any], at: datetime | None = None) -> dict[str, Any]:
        row["record_version"] = RECORD_VERSION
        row["tenant_id"] = self.tenant
        row["recorded_at"] = self.now if at is None or at <= self.now else at
        doc = document(row, tenant=self.tenant, subject_ref=self.subject_ref)
        row["hash"] = doc["hash"] = document_hash(doc)
        row["seal"] = keys.seal(self.secret, row["hash"])
        self.rows.append(row)
        self.printed.append(doc)
        return doc

    def create(self, *, subject_id: uuid.UUID, kind: str, notify_at: datetime, due_at: datetime,
               contents: dict[str, Any], cause: Mapping[str, Any] | None, purpose_key: str | None = None,
               processor_key: str | None = None) -> dict[str, Any]:
        """A new duty; `cause` is the printed event that caused it (its id and hash), if any."""
        return self._add({
            "id": uuid.uuid4(), "duty_id": uuid.uuid4(), "subject_id": subject_id, "seq": 1, "kind": kind,
            "purpose_key": purpose_key, "processor_key": processor_key, "action": "created", "status": "due",
            "notify_at": notify_at, "due_at": due_at, "detail": contents,
            "cause_event_id": cause["id"] if cause else None, "prev_hash": cause["hash"] if cause else None,
        })

    def next(self, head: Head, *, action: str, status: str, detail: dict[str, Any]) -> dict[str, Any]:
        """The next record of an existing duty (`head` is advanced)."""
        doc = self._add({
            "id": uuid.uuid4(), "duty_id": head.duty_id, "subject_id": head.subject_id, "seq": head.last_seq + 1,
            "kind": head.kind, "purpose_key": head.purpose_key, "processor_key": head.processor_key,
            "action": action, "status": status, "notify_at": head.notify_at, "due_at": head.due_at,
            "detail": detail, "cause_event_id": None, "prev_hash": head.last_hash,
        }, at=head.updated_at)  # the scheduler may have moved it after this writer's clock was read
        head.last_seq, head.last_hash, head.status = doc["seq"], doc["hash"], status
        return doc

    def json(self) -> str:
        return dumps(self.rows)


async def write(conn: asyncpg.Connection, builder: Builder) -> None:
    """A statement of its own (the consent writes carry theirs inside the ledger's append)."""
    if builder.rows:
        await conn.execute(INSERT, builder.json())
