"""Reading duties and recording their fulfilment (docs/duties.md)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from app.core.responses import json_value
from app.auth.deps import Principal
from app.consents.chain import format_time
from app.core.conditions import Conditions
from app.core.errors import Conflict, Forbidden, InvalidRequest, NotFound
from app.core.pagination import decode_cursor, encode_cursor
from app.consents import ledger
from app.duties import clocks
from app.duties.models import DEFAULT_LEAD_DAYS
from app.duties.records import Builder, Head, document, write
from app.duties.schemas import AckIn, FulfilmentIn

SKEW = timedelta(minutes=5)
NOTICES = ("ad_result_notice", "reconfirmation", "ask_at_14")
LOCK = """
SELECT d.*, s.external_id AS subject_ref, greatest(clock_timestamp(), d.updated_at) AS now,
       coalesce((SELECT coalesce(e.occurred_at, e.recorded_at) FROM consent_events e WHERE e.id = d.cause_event_id),
                d.created_at) AS act_at
FROM ledger_lock_duties($1, ARRAY[$2::uuid]) d JOIN subjects s ON s.id = d.subject_id
"""
RECORDS = "SELECT * FROM duty_records WHERE duty_id = $1 ORDER BY seq"
# Overdue as of the query, whether or not the scheduler has recorded it yet.
STATUS_SQL = {
    "overdue": "(d.status = 'overdue' OR (d.status = 'due' AND d.due_at <= now()))",
    "due": "(d.status = 'due' AND d.due_at > now())",
}
EFFECTIVE = "CASE WHEN d.status = 'due' AND d.due_at <= now() THEN 'overdue' ELSE d.status END"



def read(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": row["id"], "kind": row["kind"], "status": row["effective_status"], "subject_id": row["subject_ref"],
            "purpose": row["purpose_key"], "processor": row["processor_key"], "notify_at": row["notify_at"],
            "due_at": row["due_at"], "contents": json_value(row["contents"]),
            "fulfilment": json_value(row["fulfilment"]),
            "cause_event_id": row["cause_event_id"], "created_at": row["created_at"], "updated_at": row["updated_at"],
            "closed_at": row["closed_at"], "last_hash": row["last_hash"]}


def _filters(principal: Principal, *, status: str | None, subject_id: str | None, purpose: str | None,
             processor: str | None, due_before: datetime | None) -> Conditions:
    if principal.processor is not None:
        if processor not in (None, principal.processor):
            raise Forbidden(f"processor {principal.processor!r} may list only its own duties")
        processor = principal.processor
    where = Conditions("d.tenant_id = $1", principal.tenant)
    if status is not None:
        where.add(STATUS_SQL[status] if status in STATUS_SQL else f"d.status = {where.arg(status)}")
    where.equal("s.external_id", subject_id)
    where.equal("d.purpose_key", purpose)
    where.equal("d.processor_key", processor)
    if due_before is not None:
        where.add(f"d.due_at < {where.arg(due_before)}")
    return where


def _cursor(parts: list[str]) -> tuple[datetime, uuid.UUID]:
    due, duty_id = parts
    return datetime.fromisoformat(due), uuid.UUID(duty_id)


async def page(conn: asyncpg.Connection | asyncpg.Pool, principal: Principal, *, status: str | None, kind: str | None,
               subject_id: str | None, purpose: str | None, processor: str | None, due_before: datetime | None,
               cursor: str | None, limit: int, counts: bool) -> dict[str, Any]:
    """Duties by deadline (then id), a keyset page; `counts` per kind with the same filters."""
    where = _filters(principal, status=status, subject_id=subject_id, purpose=purpose, processor=processor,
                     due_before=due_before)
    counted = where.copy()  # counts per kind: every filter but the kind and the page
    where.equal("d.kind", kind)
    if cursor is not None:
        due, duty_id = decode_cursor(cursor, _cursor)
        where.add(f"(d.due_at, d.id) > ({where.arg(due)}, {where.arg(duty_id)})")
    limit_arg = where.arg(limit + 1)
    rows = await conn.fetch(
        f"SELECT d.*, s.external_id AS subject_ref, {EFFECTIVE} AS effective_status FROM duties d "
        f"JOIN subjects s ON s.id = d.subject_id WHERE {where.sql} ORDER BY d.due_at, d.id "
        f"LIMIT {limit_arg}", *where.args)
    more = len(rows) > limit
    rows = rows[:limit]
    result: dict[str, Any] = {
        "items": [read(r) for r in rows],
        "next_cursor": encode_cursor(rows[-1]["due_at"].isoformat(), rows[-1]["id"]) if more else None,
        "counts": None,
    }
    if counts:
        found = await conn.fetch(f"SELECT d.kind, count(*) AS n FROM duties d JOIN subjects s ON s.id = d.subject_id "
                                 f"WHERE {counted.sql} GROUP BY d.kind", *counted.args)
        result["counts"] = {r["kind"]: r["n"] for r in found}
    return result


async def detail(conn: asyncpg.Connection | asyncpg.Pool, principal: Principal, duty_id: uuid.UUID) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"SELECT d.*, s.external_id AS subject_ref, {EFFECTIVE} AS effective_status FROM duties d "
        "JOIN subjects s ON s.id = d.subject_id WHERE d.tenant_id = $1 AND d.id = $2", principal.tenant, duty_id)
    if row is None or (principal.processor is not None and row["processor_key"] != principal.processor):
        raise NotFound(f"no duty {duty_id}")
    records = []
    for r in await conn.fetch(RECORDS, duty_id):
        doc = document({**r, "detail": json_value(r["detail"])}, tenant=principal.tenant,
                       subject_ref=row["subject_ref"])
        records.append({**doc, "hash": r["hash"]})
    return {**read(row), "records": records}


def _when(at: datetime | None, now: datetime, act: datetime, field: str) -> datetime:
    """The instant a fulfilment states: not in the future, not before the act that caused the duty."""
    if at is None:
        return now
    if at > now + SKEW:
        raise InvalidRequest(f"{field} is in the future", errors=[{"field": f"body.{field}",
                                                                   "reason": "must not be later than now"}])
    if at < act:
        raise InvalidRequest(f"{field} is before the act that caused the duty", errors=[{
            "field": f"body.{field}", "reason": f"the act was at {format_time(act)}"}])
    return at


def _given(body: FulfilmentIn | AckIn) -> dict[str, Any]:
    """The facts the request states, instants in the one printed form (so a retry compares equal)."""
    given = body.model_dump(exclude_none=True)
    return {k: format_time(v) if isinstance(v, datetime) else v for k, v in given.items()}


def _check_kind(kind: str, body: FulfilmentIn) -> None:
    if kind == "suppression":
        raise Conflict("a suppression is confirmed by its processor: POST /v1/duties/{id}/ack with the "
                       "processor's own token")
    if kind == "reconsent":
        raise Conflict("a reconsent is met only by the person's new grant on the changed wording (or ended by a "
                       "withdrawal), recorded as a consent; asking them is not enough")
    errors = []
    if kind in NOTICES:
        if body.outcome != "sent":
            errors.append({"field": "body.outcome", "reason": f"a {kind} duty is met when the notice is sent"})
        if body.channel is None:
            errors.append({"field": "body.channel", "reason": "say how the notice reached the person"})
    elif kind == "destruction":
        if body.outcome != "done":
            errors.append({"field": "body.outcome", "reason": "a destruction is done"})
        for name in ("what", "how"):
            if getattr(body, name) is None:
                errors.append({"field": f"body.{name}", "reason": "a destruction record says what and how "
                                                                  "(PIPA Art. 21(3), kept separately)"})
    if errors:
        raise InvalidRequest(f"this is not how a {kind} duty is met", errors=errors)


PEEK = "SELECT s.external_id FROM duties d JOIN subjects s ON s.id = d.subject_id WHERE d.tenant_id = $1 AND d.id = $2"


async def _lock(conn: asyncpg.Connection, principal: Principal, duty_id: uuid.UUID) -> asyncpg.Record | None:
    """The duty, locked after its subject (the one lock order, docs/duties.md): a consent write of the
    same person (which may close or open duties of it) goes first or waits, never interleaves."""
    subject_ref = await conn.fetchval(PEEK, principal.tenant, duty_id)
    if subject_ref is None:
        return None
    await ledger.lock_subject(conn, principal.tenant, subject_ref, create=False)
    return await conn.fetchrow(LOCK, principal.tenant, duty_id)


async def fulfil(conn: asyncpg.Connection, principal: Principal, duty_id: uuid.UUID, body: FulfilmentIn,
                 secret: bytes) -> tuple[int, dict[str, Any]]:
    row = await _lock(conn, principal, duty_id)
    if row is None or principal.processor is not None:
        raise NotFound(f"no duty {duty_id}")
    _check_kind(row["kind"], body)
    given = _given(body)
    return await _record(conn, principal, row, action=body.outcome, given=given, at_field="at",
                         facts={"by": body.by or principal.sub, **given}, secret=secret)


async def ack(conn: asyncpg.Connection, principal: Principal, duty_id: uuid.UUID, body: AckIn,
              secret: bytes) -> tuple[int, dict[str, Any]]:
    row = await _lock(conn, principal, duty_id)
    if row is None or row["kind"] != "suppression" or row["processor_key"] is None:
        raise NotFound(f"no suppression duty {duty_id}")
    if principal.processor is None:
        raise Forbidden("a suppression is acknowledged by the processor itself, with its own token (claim "
                        "processor)")
    if principal.processor != row["processor_key"]:  # another processor's duty: as if it did not exist
        raise NotFound(f"no suppression duty {duty_id} for processor {principal.processor!r}")
    given = _given(body)
    return await _record(conn, principal, row, action="done", given=given, at_field="stopped_at",
                         facts={"by": principal.sub, "processor": principal.processor, **given}, secret=secret)


async def _next_cycle(conn: asyncpg.Connection, builder: Builder, row: asyncpg.Record) -> None:
    """The person was told and kept silent: the consent stands (Network Act Art. 50(8)), and the
    next reconfirmation is due two years on from the consent's date. Its first record names the
    duty it follows (no event caused it)."""
    contents = json_value(row["contents"])
    cycle = contents.get("cycle", 1) + 1
    consented = datetime.fromisoformat(contents["consented_at"].replace("Z", "+00:00"))
    lead = await conn.fetchval("SELECT reconfirmation_lead_days FROM tenant_settings WHERE tenant_id = $1",
                               row["tenant_id"])
    announce, deadline = clocks.reconfirmation(consented, DEFAULT_LEAD_DAYS if lead is None else lead, cycle)
    builder.create(subject_id=row["subject_id"], kind="reconfirmation", purpose_key=row["purpose_key"],
                   notify_at=announce, due_at=deadline, cause=None,
                   contents={**contents, "cycle": cycle, "follows": {"duty_id": str(row["id"]),
                                                                      "last_hash": builder.rows[-1]["hash"]}})


async def _record(conn: asyncpg.Connection, principal: Principal, row: asyncpg.Record, *, action: str,
                  given: dict[str, Any], at_field: str, facts: dict[str, Any], secret: bytes) -> tuple[int, dict]:
    """Record `action` with `facts` on the locked duty `row`, unless the duty is already closed: the
    same fulfilment again is a 200 that writes nothing (idempotent); another one is a 409."""
    if row["status"] in ("sent", "done", "cancelled"):
        before = json_value(row["fulfilment"]) or {}
        if row["status"] == action and all(before.get(k) == v for k, v in given.items()):
            return 200, await detail(conn, principal, row["id"])
        raise Conflict(f"the duty is already {row['status']} (at {format_time(row['closed_at'])}); a different "
                       "fulfilment is not recorded over it", extra={"fulfilment": before})
    now = row["now"]
    stated = given.get(at_field)
    at = _when(None if stated is None else datetime.fromisoformat(stated.replace("Z", "+00:00")), now,
               row["act_at"], at_field)
    facts[at_field] = format_time(at)
    facts["recorded_by"] = principal.sub
    facts["late"] = at >= row["due_at"]
    if row["kind"] == "destruction" and at < row["notify_at"]:
        facts["early"] = True  # destroyed while a statute still required keeping it (contents.keep_apart_until)
    builder = Builder(tenant=principal.tenant, subject_ref=row["subject_ref"], secret=secret, now=now)
    builder.next(Head.of(row), action=action, status=action, detail=facts)
    if row["kind"] == "reconfirmation" and action == "sent":
        await _next_cycle(conn, builder, row)
    await write(conn, builder)
    return 201, await detail(conn, principal, row["id"])
