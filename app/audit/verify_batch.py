"""One batch of a tenant-wide verification: many subjects read at once, each checked by the
per-subject verifier (app/consents/verification.py `check`, which with app/duties/verification.py
names the kinds of break). Read in one repeatable-read snapshot per batch; one query per table per
batch, never per subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from app.consents import chain, verification

BREAKS_KEPT = 5  # per broken subject, the first breaks are listed (the per-subject verify shows them all)

# Keyset on the subjects' unique (tenant_id, external_id) index: the position is a member id.
SUBJECTS_FIRST = """
SELECT id, tenant_id, external_id, last_seq, last_hash, last_recorded_at FROM subjects
WHERE tenant_id = $1 ORDER BY external_id LIMIT $2
"""
SUBJECTS_AFTER = """
SELECT id, tenant_id, external_id, last_seq, last_hash, last_recorded_at FROM subjects
WHERE tenant_id = $1 AND external_id > $3 ORDER BY external_id LIMIT $2
"""
# A batch planned ahead (worker processes, app/audit/verify_job.py): the subjects up to its last
# member id, including any created since it was planned, so consecutive batches never overlap.
SUBJECTS_UPTO = """
SELECT id, tenant_id, external_id, last_seq, last_hash, last_recorded_at FROM subjects
WHERE tenant_id = $1 AND external_id <= $2 ORDER BY external_id
"""
SUBJECTS_BETWEEN = """
SELECT id, tenant_id, external_id, last_seq, last_hash, last_recorded_at FROM subjects
WHERE tenant_id = $1 AND external_id > $3 AND external_id <= $2 ORDER BY external_id
"""
BOUNDS_FIRST = "SELECT external_id FROM subjects WHERE tenant_id = $1 ORDER BY external_id LIMIT $2"
BOUNDS_AFTER = ("SELECT external_id FROM subjects WHERE tenant_id = $1 AND external_id > $3"
                " ORDER BY external_id LIMIT $2")
# The per-subject statements of app/consents/verification.py and app/duties/verification.py, for
# an array of subjects, ordered so that each subject's rows keep the order its checks expect.
EVENTS = "SELECT * FROM consent_events WHERE subject_id = ANY($1::uuid[]) ORDER BY subject_id, seq, id"
STATES = "SELECT * FROM consent_states WHERE subject_id = ANY($1::uuid[])"
EVIDENCE = ("SELECT id, subject_id, ip, user_agent, guardian, commitment, purged_at FROM consent_evidence"
            " WHERE subject_id = ANY($1::uuid[])")
LOG = """
SELECT subject_id, event_id, idx, event_hash, false AS pending FROM ledger_log WHERE subject_id = ANY($1::uuid[])
UNION ALL
SELECT subject_id, event_id, NULL, event_hash, true FROM ledger_log_queue WHERE subject_id = ANY($1::uuid[])
"""
RECORDS = "SELECT * FROM duty_records WHERE subject_id = ANY($1::uuid[]) ORDER BY subject_id, duty_id, seq, id"
DUTIES = "SELECT * FROM duties WHERE subject_id = ANY($1::uuid[])"


@dataclass
class Batch:
    """What one batch adds to a run; `last` is the new keyset position (None: no subject left)."""

    last: str | None = None
    subjects: int = 0
    events: int = 0
    duty_records: int = 0
    broken: list[dict[str, Any]] = field(default_factory=list)


def _by_subject(rows: list[asyncpg.Record]) -> dict[Any, list[asyncpg.Record]]:
    out: dict[Any, list[asyncpg.Record]] = defaultdict(list)
    for row in rows:
        out[row["subject_id"]].append(row)
    return out


def broken_entry(report: dict[str, Any]) -> dict[str, Any]:
    """How a run lists a broken subject: its member id, the kinds of break, the first few breaks."""
    kinds = sorted({b["kind"] for b in report["breaks"]})
    breaks = [{**b, "event_id": str(b["event_id"]) if b["event_id"] is not None else None}
              for b in report["breaks"][:BREAKS_KEPT]]
    return {"subject_id": report["subject_id"], "kinds": kinds, "breaks_total": len(report["breaks"]),
            "breaks": breaks}


async def read_subjects(conn: asyncpg.Connection, tenant: str, after: str | None, limit: int,
                        upto: str | None = None) -> list[asyncpg.Record]:
    """The next `limit` subjects after member id `after` (None: from the first), or with `upto`
    every subject in (after, upto]."""
    if upto is not None:
        if after is None:
            return await conn.fetch(SUBJECTS_UPTO, tenant, upto)
        return await conn.fetch(SUBJECTS_BETWEEN, tenant, upto, after)
    if after is None:
        return await conn.fetch(SUBJECTS_FIRST, tenant, limit)
    return await conn.fetch(SUBJECTS_AFTER, tenant, limit, after)


async def bound(conn: asyncpg.Connection, tenant: str, after: str | None, limit: int) -> str | None:
    """The member id that ends the next batch of `limit` subjects (an index-only read), or None."""
    ids = await (conn.fetch(BOUNDS_FIRST, tenant, limit) if after is None
                 else conn.fetch(BOUNDS_AFTER, tenant, limit, after))
    return ids[-1]["external_id"] if ids else None


@contextlib.contextmanager
def _without_cycle_collection() -> Iterator[None]:
    """A batch allocates ~100 objects per event (rows, UUIDs, timestamps, documents), none in a
    cycle, all gone after it: the cyclic collector would walk them again and again as they pile up
    (measured: a third of the CPU per event, the rows' decoding three times slower). Reference
    counting frees them all the same."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def check_batch(conn: asyncpg.Connection, tenant: str, after: str | None, limit: int, secret: bytes,
                      first_v2: list[int | None] | None = None, upto: str | None = None) -> Batch:
    """The subjects of `read_subjects`, read in one snapshot and checked. `first_v2`: a one-element
    cache of the tenant's first version 2 leaf, filled on need."""
    with _without_cycle_collection():
        return await _check_batch(conn, tenant, after, limit, secret, first_v2, upto)


async def _check_batch(conn: asyncpg.Connection, tenant: str, after: str | None, limit: int, secret: bytes,
                       first_v2: list[int | None] | None, upto: str | None) -> Batch:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        # A batch's reads are index probes for a thousand subjects at once: parallel workers (the
        # planner's choice for the events) took more CPU to coordinate than they saved, and a run
        # already keeps every core busy (bench/README.md "Issue 11 point 4").
        await conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        subjects = await read_subjects(conn, tenant, after, limit, upto)
        if not subjects:
            return Batch()
        ids = [s["id"] for s in subjects]
        statement = await conn.prepare(EVENTS)
        events = await statement.fetch(ids)
        typed = chain.typed_rows(statement.get_attributes())
        cited = verification.Cited(await conn.fetch(verification.CITED, *verification.cited_ids(events)))
        states, evidence, logged, records, duties = [
            _by_subject(await conn.fetch(sql, ids)) for sql in (STATES, EVIDENCE, LOG, RECORDS, DUTIES)]
        if any(e["chain_version"] == 1 for e in events):
            first_v2 = first_v2 if first_v2 is not None else []
            if not first_v2:
                first_v2.append(await conn.fetchval(verification.FIRST_V2_LEAF, tenant))
    # The checks are CPU only: in a thread, so the worker's loop (webhooks, a stop signal) keeps turning.
    return await asyncio.to_thread(_check_all, subjects, events, cited, states, evidence, logged, records, duties,
                                   first_v2, secret, typed)


def _check_all(subjects, events, cited, states, evidence, logged, records, duties, first_v2, secret,
               typed) -> Batch:
    events_of = _by_subject(events)
    batch = Batch(last=subjects[-1]["external_id"], subjects=len(subjects))
    for subject in subjects:
        sid = subject["id"]
        own = events_of.get(sid, [])
        report = verification.check(
            subject, events=own, states=states.get(sid, []), cited=cited, evidence=evidence.get(sid, []),
            logged=logged.get(sid, []), duty_records=records.get(sid, []), duties=duties.get(sid, []),
            first_v2=first_v2[0] if first_v2 else None,
            secret=secret, typed=typed)
        batch.events += report["events_checked"]
        batch.duty_records += report["duty_records_checked"]
        if not report["valid"]:
            batch.broken.append(broken_entry(report))
    return batch
