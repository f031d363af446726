"""Synthetic ledger rows bulk-loaded with COPY: subjects, their events and their current state.

Rows are shaped like the ones the service writes (same columns, NOT NULL columns filled, seq
contiguous from 1, prev_hash linking to the previous event's hash, state = last event per purpose),
but the hashes are a cheap sha256 of the event id and the previous hash, not the canonical-JSON
event hash: nothing here verifies chains, and hashing 5 million events properly would dominate
the seeding time.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

SUBJECT_COLUMNS = ("id", "tenant_id", "external_id", "last_seq", "last_hash", "created_at")
EVENT_COLUMNS = (
    "id", "tenant_id", "subject_id", "seq", "purpose_id", "version", "action", "status", "previous_status",
    "collection_point_id", "notice_id", "disclosure_hash", "method", "actor_type", "actor_ref", "guardian",
    "ip", "user_agent", "occurred_at", "recorded_at", "request_id", "reason", "prev_hash", "hash",
)
STATE_COLUMNS = (
    "subject_id", "purpose_id", "tenant_id", "status", "version", "since", "last_event_id", "notice_id",
    "collection_point_id",
)

# Subject i starts somewhere in 2024 (minute i of the year, wrapping) and comes back every 3 days,
# each visit recording one decision per purpose of the form; so event times follow seq.
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
VISIT_EVERY = timedelta(days=3)
MINUTES_PER_YEAR = 365 * 24 * 60
IP = "198.51.100.7"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) consent-ledger-bench"
SUBJECTS_PER_BATCH = 5_000


@dataclass(frozen=True)
class Catalog:
    """What a tenant's rows point to: its benchmark collection point, notice and purposes."""

    tenant: str
    collection_point_id: uuid.UUID
    notice_id: uuid.UUID
    purposes: tuple[tuple[uuid.UUID, str], ...]  # (id, disclosure_hash) in form order


def visit_time(index: int, visit: int) -> datetime:
    """When subject `index` made its `visit`-th (0-based) visit."""
    return EPOCH + timedelta(minutes=index % MINUTES_PER_YEAR) + visit * VISIT_EVERY


def _subject_rows(catalog: Catalog, external_id: str, index: int,
                  events: int) -> tuple[tuple, list[tuple], list[tuple]]:
    subject_id = uuid.uuid4()
    tenant, cp, notice = catalog.tenant, catalog.collection_point_id, catalog.notice_id
    per_visit = len(catalog.purposes)
    # per purpose: (version, status, last event id, since) of its latest event
    latest: dict[uuid.UUID, tuple[int, str, uuid.UUID, datetime]] = {}
    event_rows = []
    prev_hash: str | None = None
    request_id, at = None, None
    for seq in range(1, events + 1):
        visit, slot = divmod(seq - 1, per_visit)
        if slot == 0:
            request_id, at = uuid.uuid4(), visit_time(index, visit)
        purpose_id, disclosure_hash = catalog.purposes[slot]
        previous = latest.get(purpose_id)
        version = previous[0] + 1 if previous else 1
        status = "granted" if version % 2 else "withdrawn"  # grant, withdraw, grant again, ...
        event_id = uuid.uuid4()
        event_hash = hashlib.sha256(event_id.bytes + (prev_hash or "").encode()).hexdigest()
        event_rows.append((
            event_id, tenant, subject_id, seq, purpose_id, version, status, status,
            previous[1] if previous else None, cp, notice, disclosure_hash, "web", "subject", None, None,
            IP, USER_AGENT, at, at, request_id, None, prev_hash, event_hash,
        ))
        latest[purpose_id] = (version, status, event_id, at)
        prev_hash = event_hash
    subject = (subject_id, tenant, external_id, events, prev_hash, visit_time(index, 0))
    states = [(subject_id, purpose_id, tenant, status, version, since, event_id, notice, cp)
              for purpose_id, (version, status, event_id, since) in latest.items()]
    return subject, event_rows, states


async def seed_range(conn: asyncpg.Connection, catalog: Catalog, prefix: str, start: int, stop: int,
                     events: int) -> None:
    """Subjects `prefix`start .. `prefix`stop-1 with `events` events each, one transaction per batch."""
    for batch_start in range(start, stop, SUBJECTS_PER_BATCH):
        subjects, event_rows, state_rows = [], [], []
        for index in range(batch_start, min(batch_start + SUBJECTS_PER_BATCH, stop)):
            subject, rows, states = _subject_rows(catalog, f"{prefix}{index}", index, events)
            subjects.append(subject)
            event_rows.extend(rows)
            state_rows.extend(states)
        async with conn.transaction():
            # parents before children: the foreign keys are checked row by row, as in production
            await conn.copy_records_to_table("subjects", records=subjects, columns=SUBJECT_COLUMNS)
            await conn.copy_records_to_table("consent_events", records=event_rows, columns=EVENT_COLUMNS)
            await conn.copy_records_to_table("consent_states", records=state_rows, columns=STATE_COLUMNS)


def _worker(dsn: str, catalog: Catalog, prefix: str, start: int, stop: int, events: int) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await seed_range(conn, catalog, prefix, start, stop, events)
        finally:
            await conn.close()

    asyncio.run(run())


def seed_parallel(dsn: str, catalog: Catalog, prefix: str, subjects: int, events: int, workers: int) -> None:
    """Split the subjects over `workers` processes: while one builds rows in Python, PostgreSQL
    ingests another's COPY, so both cores of a small machine stay busy."""
    bounds = [subjects * w // workers for w in range(workers + 1)]
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker, args=(dsn, catalog, prefix, bounds[w], bounds[w + 1], events), daemon=True)
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
