"""Synthetic ledger rows bulk-loaded with COPY: subjects, their raw evidence and their events, in
chain version 2 (docs/proof.md), through the same statement trigger as the service's writes.

Rows are shaped like the ones the service writes: per visit (one recording of one decision per
purpose of the form) one consent_evidence row with its keyed commitment, and one event per
decision with the keys the document prints (purpose_key, collection_point_key, notice_*),
evidence_id/commitment, seq contiguous from 1, prev_hash linking to the previous event's hash,
chain_version 2 and a seal (app.proof.keys.seal with the bench's ledger secret). Subjects are
copied in with an empty head; the trigger on consent_events (alembic 0004) checks each copied
batch against the head, then moves the head, consent_states and ledger_log_queue, as it does for
the service. Its per-subject loop reads the whole batch once per subject, so the events go in
statements of about EVENTS_PER_STATEMENT events, not one COPY per 5,000 subjects.

Hashes: with `documents=True` (the comparison's seeded readers) every hash is the project's own
chain.document_hash(chain.document(...)) and every commitment keys.commitment(...), so the rows
verify as the service's do. With `documents=False` (the 5-million-event part, where that hashing
would take minutes of the two cores) the hash is a cheap sha256 of the event id and the previous
hash and the commitment an HMAC of the evidence id: the chain still links, seals and the trigger's
checks hold, same lengths and columns, but `verify` would report the hashes. No receipts are
seeded (no benchmarked read touches them).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import multiprocessing
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from app.consents import chain
from app.proof import keys

# The head (last_seq, last_hash, last_recorded_at) stays at its default: the trigger moves it.
SUBJECT_COLUMNS = ("id", "tenant_id", "external_id", "created_at")
EVIDENCE_COLUMNS = ("id", "tenant_id", "subject_id", "ip", "user_agent", "commitment", "created_at")
EVENT_COLUMNS = (
    "id", "tenant_id", "subject_id", "seq", "purpose_id", "purpose_key", "version", "action", "status",
    "previous_status", "collection_point_id", "collection_point_key", "notice_id", "notice_key", "notice_version",
    "notice_sha256", "disclosure_hash", "method", "actor_type", "evidence_id", "evidence_commitment", "occurred_at",
    "recorded_at", "request_id", "prev_hash", "hash", "seal", "chain_version",
)

# Subject i starts somewhere in 2024 (minute i of the year, wrapping) and comes back every 3 days,
# each visit recording one decision per purpose of the form; so event times follow seq.
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
VISIT_EVERY = timedelta(days=3)
MINUTES_PER_YEAR = 365 * 24 * 60
IP = "198.51.100.7"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) consent-ledger-bench"
SUBJECTS_PER_BATCH = 5_000  # one transaction
EVENTS_PER_STATEMENT = 1_000  # one COPY into consent_events, i.e. one firing of the statement trigger


@dataclass(frozen=True)
class Catalog:
    """What a tenant's rows point to: its benchmark collection point, notice and purposes."""

    tenant: str
    collection_point_id: uuid.UUID
    collection_point_key: str
    notice_id: uuid.UUID
    notice_key: str
    notice_version: str
    notice_sha256: str
    purposes: tuple[tuple[uuid.UUID, str, str], ...]  # (id, key, disclosure_hash) in form order


def visit_time(index: int, visit: int) -> datetime:
    """When subject `index` made its `visit`-th (0-based) visit."""
    return EPOCH + timedelta(minutes=index % MINUTES_PER_YEAR) + visit * VISIT_EVERY


def _commitment(secret: bytes, evidence_id: uuid.UUID, documents: bool) -> str:
    if documents:
        return keys.commitment(secret, {"id": str(evidence_id), "ip": IP, "user_agent": USER_AGENT,
                                        "guardian": None})
    return hmac.new(secret, evidence_id.bytes, hashlib.sha256).hexdigest()


def _subject_rows(catalog: Catalog, external_id: str, index: int, events: int, secret: bytes,
                  documents: bool) -> tuple[tuple, list[tuple], list[tuple]]:
    subject_id = uuid.uuid4()
    tenant = catalog.tenant
    per_visit = len(catalog.purposes)
    latest: dict[uuid.UUID, tuple[int, str]] = {}  # per purpose: (version, status) of its latest event
    evidence_rows, event_rows = [], []
    prev_hash: str | None = None
    request_id = at = evidence_id = commitment = None
    for seq in range(1, events + 1):
        visit, slot = divmod(seq - 1, per_visit)
        if slot == 0:
            request_id, at, evidence_id = uuid.uuid4(), visit_time(index, visit), uuid.uuid4()
            commitment = _commitment(secret, evidence_id, documents)
            evidence_rows.append((evidence_id, tenant, subject_id, IP, USER_AGENT, commitment, at))
        purpose_id, purpose_key, disclosure_hash = catalog.purposes[slot]
        previous = latest.get(purpose_id)
        version = previous[0] + 1 if previous else 1
        status = "granted" if version % 2 else "withdrawn"  # grant, withdraw, grant again, ...
        previous_status = previous[1] if previous else None
        event_id = uuid.uuid4()
        if documents:  # the row as chain_onto() makes it, printed and hashed by the project's own code
            event_hash = chain.document_hash(chain.document({
                "id": event_id, "seq": seq, "request_id": request_id, "chain_version": chain.CHAIN_VERSION,
                "purpose_key": purpose_key, "version": version, "action": status, "status": status,
                "previous_status": previous_status, "collection_point_key": catalog.collection_point_key,
                "notice_id": catalog.notice_id, "notice_key": catalog.notice_key,
                "notice_version": catalog.notice_version, "notice_sha256": catalog.notice_sha256,
                "notice_superseded_at": None, "disclosure_hash": disclosure_hash, "method": "web",
                "actor_type": "subject", "actor_ref": None, "evidence_id": evidence_id,
                "evidence_commitment": commitment, "occurred_at": at, "recorded_at": at, "reason": None,
                "prev_hash": prev_hash,
            }, tenant=tenant, subject_ref=external_id))
        else:
            event_hash = hashlib.sha256(event_id.bytes + (prev_hash or "").encode()).hexdigest()
        event_rows.append((
            event_id, tenant, subject_id, seq, purpose_id, purpose_key, version, status, status, previous_status,
            catalog.collection_point_id, catalog.collection_point_key, catalog.notice_id, catalog.notice_key,
            catalog.notice_version, catalog.notice_sha256, disclosure_hash, "web", "subject", evidence_id,
            commitment, at, at, request_id, prev_hash, event_hash, keys.seal(secret, event_hash),
            chain.CHAIN_VERSION,
        ))
        latest[purpose_id] = (version, status)
        prev_hash = event_hash
    subject = (subject_id, tenant, external_id, visit_time(index, 0))
    return subject, evidence_rows, event_rows


async def seed_range(conn: asyncpg.Connection, catalog: Catalog, prefix: str, start: int, stop: int,
                     events: int, secret: bytes, *, documents: bool = True) -> None:
    """Subjects `prefix`start .. `prefix`stop-1 with `events` events each, one transaction per
    SUBJECTS_PER_BATCH subjects; `secret` is the ledger secret the services seal with."""
    per_statement = max(1, EVENTS_PER_STATEMENT // max(events, 1))  # subjects per COPY into consent_events
    for batch_start in range(start, stop, SUBJECTS_PER_BATCH):
        subjects, evidence_rows, event_groups = [], [], []
        for index in range(batch_start, min(batch_start + SUBJECTS_PER_BATCH, stop)):
            subject, evidence, rows = _subject_rows(catalog, f"{prefix}{index}", index, events, secret, documents)
            subjects.append(subject)
            evidence_rows.extend(evidence)
            if (index - batch_start) % per_statement == 0:
                event_groups.append([])
            event_groups[-1].extend(rows)
        async with conn.transaction():
            # parents before children: the foreign keys are checked row by row, as in production
            await conn.copy_records_to_table("subjects", records=subjects, columns=SUBJECT_COLUMNS)
            await conn.copy_records_to_table("consent_evidence", records=evidence_rows, columns=EVIDENCE_COLUMNS)
            for group in event_groups:  # each COPY: one firing of the trigger for whole chains of its subjects
                await conn.copy_records_to_table("consent_events", records=group, columns=EVENT_COLUMNS)


def _worker(dsn: str, catalog: Catalog, prefix: str, start: int, stop: int, events: int, secret: bytes,
            documents: bool) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await seed_range(conn, catalog, prefix, start, stop, events, secret, documents=documents)
        finally:
            await conn.close()

    asyncio.run(run())


def seed_parallel(dsn: str, catalog: Catalog, prefix: str, subjects: int, events: int, workers: int,
                  secret: bytes, *, documents: bool = False) -> None:
    """Split the subjects over `workers` processes: while one builds rows in Python, PostgreSQL
    ingests another's COPY, so both cores of a small machine stay busy."""
    bounds = [subjects * w // workers for w in range(workers + 1)]
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker, daemon=True,
                        args=(dsn, catalog, prefix, bounds[w], bounds[w + 1], events, secret, documents))
        for w in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
        failed = [p.exitcode for p in processes if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"seeding worker(s) failed with exit codes {failed}")
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(10)
