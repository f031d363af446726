"""The duty scheduler (in the worker): duties that come due are announced, duties past their
deadline become overdue; each step is a sealed record in the duty's chain and a webhook message
(docs/duties.md), in one transaction per batch.

Messages go to the tenant's endpoints that list the type in their event_types (an empty list means
consent events only, as for checkpoints): `duty.<kind>` when a duty comes due (a suppression only
to its processor's endpoints), `duty.overdue` when one becomes overdue. Duties are claimed with
SKIP LOCKED (ledger_claim_duties): several workers, or a consent write holding a duty, never make
this wait, and a duty is never announced twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import asyncpg

from app.consents.chain import format_time
from app.core.periodic import every
from app.core.responses import dumps, json_value
from app.core.settings import Settings
from app.duties import reconsent
from app.duties.records import INSERT, Builder, Head
from app.proof.context import Proof
from app.webhooks import outbox

log = logging.getLogger("consent_ledger.duties")

BATCH = 2000
CLAIM = """
SELECT d.*, s.external_id AS subject_ref, greatest(clock_timestamp(), d.updated_at) AS now
FROM ledger_claim_duties($1, $2) d JOIN subjects s ON s.id = d.subject_id
"""
# One message per duty; a delivery per endpoint that lists its type (see the module's docstring).
ENQUEUE = outbox.enqueue_unordered("""m.type = ANY(e.event_types)
     AND (cardinality(e.purposes) = 0 OR m.purpose IS NULL OR m.purpose = ANY(e.purposes))
     -- a processor's duty reaches that processor's endpoints and the tenant's own, no other processor's
     AND (m.processor IS NULL OR e.processor_id IS NULL
          OR e.processor_id = (SELECT p.id FROM processors p WHERE p.tenant_id = m.tenant AND p.key = m.processor))""")



def message(row: asyncpg.Record, doc: dict[str, Any], type_: str) -> dict[str, Any]:
    data = {"tenant": row["tenant_id"], "subject_id": row["subject_ref"], "duty_id": str(row["id"]),
            "kind": row["kind"], "status": doc["status"], "purpose": row["purpose_key"],
            "processor": row["processor_key"], "notify_at": format_time(row["notify_at"]),
            "due_at": format_time(row["due_at"]), "contents": json_value(row["contents"]), "record_hash": doc["hash"]}
    return {"id": uuid.uuid4(), "tenant": row["tenant_id"], "subject_ref": row["subject_ref"], "type": type_,
            "purpose": row["purpose_key"],
            "processor": row["processor_key"],
            "body": outbox.body(type_, row["now"], data)}


def _announce(row: asyncpg.Record, secret: bytes, which: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The sealed record and the message of one claimed duty."""
    builder = Builder(tenant=row["tenant_id"], subject_ref=row["subject_ref"], secret=secret, now=row["now"])
    if which == "overdue":
        doc = builder.next(Head.of(row), action="overdue", status="overdue",
                           detail={"deadline": format_time(row["due_at"])})
        return builder.rows, message(row, doc, "duty.overdue")
    doc = builder.next(Head.of(row), action="notified", status=row["status"], detail={"type": f"duty.{row['kind']}"})
    return builder.rows, message(row, doc, f"duty.{row['kind']}")


async def _write(conn: asyncpg.Connection, records: list[dict[str, Any]], messages: list[dict[str, Any]]) -> None:
    async with conn.transaction():  # a savepoint: a refused batch leaves the claim standing
        await conn.execute(INSERT, dumps(records))
        await conn.execute(ENQUEUE, dumps(messages))


async def _step(conn: asyncpg.Connection, secret: bytes, which: str, limit: int) -> int:
    """One batch of `which` ('overdue' or 'notify'); returns how many duties it moved. A batch the
    database refuses (a duty row a rogue hand changed, whose record its trigger then refuses) is
    written one duty at a time: the others go on, the refused one is logged at ERROR and skipped."""
    async with conn.transaction():
        rows = await conn.fetch(CLAIM, which, limit)
        if not rows:
            return 0
        built = [_announce(row, secret, which) for row in rows]
        try:
            await _write(conn, [r for records, _ in built for r in records], [m for _, m in built])
            return len(rows)
        except asyncpg.PostgresError:
            pass
        moved = 0
        for row, (records, msg) in zip(rows, built):
            try:
                await _write(conn, records, [msg])
                moved += 1
            except asyncpg.PostgresError as exc:
                log.error("duty %s (tenant %r, %s) could not be %s: %s; verify the subject %r", row["id"],
                          row["tenant_id"], row["kind"], "marked overdue" if which == "overdue" else "announced",
                          exc, row["subject_ref"])
    return moved


async def run_pass(conn: asyncpg.Connection, secret: bytes, *, batch: int = BATCH) -> dict[str, int]:
    """Everything due now: overdue first (a duty both due and past its deadline is only overdue)."""
    moved = {"overdue": 0, "notified": 0, "reconsent": 0}
    for which, key in (("overdue", "overdue"), ("notify", "notified")):
        while n := await _step(conn, secret, which, batch):
            moved[key] += n
    while (n := await reconsent.step(conn, secret, batch)) is not None:
        moved["reconsent"] += n
    return moved


async def run_scheduler(settings: Settings, stop: asyncio.Event, proof: Proof) -> None:
    """Every DUTY_INTERVAL_SECONDS until `stop`; an outage is logged and retried."""
    async def job(conn: asyncpg.Connection) -> None:
        started = time.perf_counter()
        moved = await run_pass(conn, proof.secret)
        if any(moved.values()):
            log.info("duties: %d announced, %d overdue, %d asked to consent again (%.2f s)",
                     moved["notified"], moved["overdue"], moved["reconsent"], time.perf_counter() - started)

    await every(settings, stop, settings.duty_interval_seconds, name="consent-ledger-duties", job=job, log=log,
                what="the duty scheduler's round")
