"""The raw baseline: the rows of the project's three hot calls, written with plain FastAPI and an
asyncpg pool, to show what the same database work costs without the project's own layers.

A POST writes what the project's record call writes (docs/proof.md): the subject locked or
created through ledger_lock_subject() (the runtime role may not update subjects itself), one
consent_evidence row with its keyed commitment, the events as chain version 2 rows (the printed
keys, evidence id and commitment, seal) in one INSERT, so the statement trigger that moves head,
state and log queue fires once per call as on the project's side, and a receipts row. The hash is
the project's own chain.document_hash(chain.document(...)), the seal and commitment come from
app.proof.keys with the same ledger secret, and the receipt is the project's receipt payload
signed with the same Ed25519 key: both sides pay the same hashing and crypto. With
BASELINE_EVENT_STATEMENTS=each the events go in one INSERT each (the trigger fires per event),
the one-statement-per-row shape this baseline had before chain version 2.

Left out on purpose, because they are the project's costs being measured: JWT verification (the
Authorization header is ignored), the idempotency fingerprint, the per-request catalog lookup and
consent-rule checks (the collection point, its notice and purposes and the tenant's name are read
once at startup), webhook outbox rows, response models and the project's response building.

Run by bench/run.py as `uvicorn bench.baseline_app:create_app --factory` as the runtime role, with
DATABASE_URL (postgresql://...), BASELINE_TENANT, BASELINE_COLLECTION_POINT, BASELINE_POOL_SIZE,
SIGNING_KEY_FILE and LEDGER_SECRET_FILE set.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator, Literal

import asyncpg
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from app.consents import chain, receipts
from app.duties import clocks, records
from app.proof import keys


class DecisionIn(BaseModel):
    purpose: str
    decision: Literal["granted", "refused", "acknowledged"]
    disclosure_hash: str | None = None


class RecordIn(BaseModel):
    collection_point: str
    notice_id: uuid.UUID
    decisions: list[DecisionIn] = Field(min_length=1)


LOCK_OR_CREATE = "SELECT id, last_seq, last_hash, now, created FROM ledger_lock_subject($1, $2, true)"
STATES = "SELECT purpose_id, status, version FROM consent_states WHERE subject_id = $1"
INSERT_EVIDENCE = """
INSERT INTO consent_evidence (id, tenant_id, subject_id, ip, user_agent, commitment, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
# One statement for the call's events: the trigger behind it checks them against the head and
# moves the head, consent_states and ledger_log_queue.
INSERT_EVENTS = """
INSERT INTO consent_events (
    id, seq, purpose_id, purpose_key, version, action, status, previous_status, disclosure_hash, prev_hash, hash,
    seal, tenant_id, subject_id, evidence_id, evidence_commitment, recorded_at, occurred_at, collection_point_id,
    collection_point_key, notice_id, notice_key, notice_version, notice_sha256, method, actor_type, request_id,
    chain_version
)
SELECT u.*, $13, $14, $15, $16, $17, $17, $18, $19, $20, $21, $22, $23, 'web', 'subject', $24, 2
FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::text[], $5::int[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::text[], $11::text[], $12::text[]) AS u
"""
INSERT_RECEIPT = """
INSERT INTO receipts (id, tenant_id, subject_id, request_id, event_ids, jws, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
EVENT_COLUMNS = ("id", "seq", "purpose_id", "purpose_key", "version", "action", "status", "previous_status",
                 "disclosure_hash", "prev_hash", "hash", "seal")

CURRENT_STATE = """
SELECT p.key AS purpose, p.kind, p.channel, s.status, s.since, s.version, s.last_event_id,
       s.notice_id, n.key AS notice_key, n.version AS notice_version, cp.key AS collection_point
FROM subjects su
JOIN consent_states s ON s.subject_id = su.id
JOIN purposes p ON p.id = s.purpose_id
LEFT JOIN notices n ON n.id = s.notice_id
LEFT JOIN collection_points cp ON cp.id = s.collection_point_id
WHERE su.tenant_id = $1 AND su.external_id = $2
ORDER BY p.key
"""
# The columns an event's printed form (chain.document) is made of, and its hash.
HISTORY = """
SELECT e.chain_version, e.id, e.seq, e.request_id, e.purpose_key, e.version, e.action, e.status,
       e.previous_status, e.collection_point_key, e.notice_id, e.notice_key, e.notice_version, e.notice_sha256,
       e.notice_superseded_at, e.disclosure_hash, e.method, e.actor_type, e.actor_ref, e.evidence_id,
       e.evidence_commitment, e.occurred_at, e.recorded_at, e.reason, e.prev_hash, e.hash
FROM subjects su
JOIN consent_events e ON e.subject_id = su.id
WHERE su.tenant_id = $1 AND su.external_id = $2 AND e.seq > $3
ORDER BY e.seq
LIMIT $4
"""
CATALOG = """
SELECT cp.id AS collection_point_id, cp.notice_key, p.id, p.key, p.kind, p.channel, p.disclosure_hash,
       p.disclosures::text AS disclosures
FROM collection_points cp
JOIN collection_point_purposes cpp ON cpp.collection_point_id = cp.id
JOIN purposes p ON p.id = cpp.purpose_id
WHERE cp.tenant_id = $1 AND cp.key = $2
ORDER BY cpp.position
"""
NOTICE = """
SELECT id, key, version, sha256 FROM notices
WHERE tenant_id = $1 AND key = $2 AND published_at IS NOT NULL AND effective_at <= now()
ORDER BY effective_at DESC, published_at DESC LIMIT 1
"""
CONTROLLER = "SELECT name, name_en FROM tenants WHERE id = $1"


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)  # UUIDs, asyncpg's own or the stdlib's


def _json(payload: Any, status_code: int = 200) -> Response:
    return Response(json.dumps(payload, default=_plain, ensure_ascii=False, separators=(",", ":")),
                    status_code=status_code, media_type="application/json")


def _duties(tenant: str, subject_ref: str, subject_id: uuid.UUID, now: Any, secret: bytes, purposes: dict,
            printed: list[dict], controller: dict) -> records.Builder:
    """What the law owes after ad-reception acts (docs/duties.md), the plain way: one result notice
    for the request, a reconfirmation per new grant; each record hashed and sealed like the project's."""
    builder = records.Builder(tenant=tenant, subject_ref=subject_ref, secret=secret, now=now)
    ads = [e for e in printed if purposes[e["purpose"]]["kind"] == "marketing" and purposes[e["purpose"]]["channel"]
           and e["status"] != e["previous_status"]]
    sender = {"name": controller["name"], "name_en": controller["name_en"]}
    if ads:
        builder.create(subject_id=subject_id, kind="ad_result_notice", notify_at=now,
                       due_at=clocks.days_after(now, clocks.RESULT_NOTICE_DAYS), cause=ads[-1],
                       contents={"sender": sender, "acts": [{"purpose": e["purpose"], "action": e["action"],
                                                             "at": e["recorded_at"]} for e in ads]})
    for event in ads:
        if event["status"] == "granted":
            announce, deadline = clocks.reconfirmation(now, 30)
            builder.create(subject_id=subject_id, kind="reconfirmation", purpose_key=event["purpose"],
                           notify_at=announce, due_at=deadline, cause=event,
                           contents={"sender": sender, "purpose": event["purpose"], "consented_at": event["recorded_at"]})
    return builder


def create_app() -> FastAPI:
    tenant = os.environ["BASELINE_TENANT"]
    point_key = os.environ["BASELINE_COLLECTION_POINT"]
    pool_size = int(os.environ["BASELINE_POOL_SIZE"])
    per_row = os.environ.get("BASELINE_EVENT_STATEMENTS") == "each"  # one INSERT (and trigger firing) per event
    signer = keys.load_signer(Path(os.environ["SIGNING_KEY_FILE"]), None)
    secret = keys.load_secret(Path(os.environ["LEDGER_SECRET_FILE"]), None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(
            os.environ["DATABASE_URL"], min_size=pool_size, max_size=pool_size,
            server_settings={"application_name": "bench-baseline", "timezone": "UTC"},
        )
        rows = await pool.fetch(CATALOG, tenant, point_key)
        if not rows:
            raise RuntimeError(f"no collection point {point_key!r} for tenant {tenant!r}")
        notice = await pool.fetchrow(NOTICE, tenant, rows[0]["notice_key"])
        if notice is None:
            raise RuntimeError(f"no notice {rows[0]['notice_key']!r} in force for tenant {tenant!r}")
        app.state.pool = pool
        app.state.collection_point_id = rows[0]["collection_point_id"]
        app.state.notice = dict(notice)
        app.state.purposes = {r["key"]: {**dict(r), "disclosure_ko": (json.loads(r["disclosures"] or "{}")).get("ko")}
                              for r in rows}
        app.state.controller = dict(await pool.fetchrow(CONTROLLER, tenant))
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/subjects/{subject_id}/consents")
    async def record(subject_id: str, body: RecordIn, request: Request) -> Response:
        notice, purposes = app.state.notice, app.state.purposes
        if (body.collection_point != point_key or body.notice_id != notice["id"]
                or any(d.purpose not in purposes for d in body.decisions)):
            raise HTTPException(422, "unknown collection point, notice or purpose")
        ip = request.client.host if request.client else None
        user_agent = request.headers.get("user-agent")
        request_id = uuid.uuid4()
        evidence_id = commitment = None
        if ip is not None or user_agent is not None:
            evidence_id = uuid.uuid4()
            commitment = keys.commitment(secret, {"id": str(evidence_id), "ip": ip, "user_agent": user_agent,
                                                  "guardian": None})
        rows, printed = [], []
        async with app.state.pool.acquire() as conn, conn.transaction():
            head = await conn.fetchrow(LOCK_OR_CREATE, tenant, subject_id)
            states = {} if head["created"] else {
                r["purpose_id"]: (r["status"], r["version"]) for r in await conn.fetch(STATES, head["id"])}
            seq, prev_hash, now = head["last_seq"], head["last_hash"], head["now"]
            for decision in body.decisions:
                purpose = purposes[decision.purpose]
                previous_status, previous_version = states.get(purpose["id"], (None, 0))
                status = decision.decision
                if status == "refused" and previous_status == "granted":
                    status = "withdrawn"
                seq += 1
                row = {
                    "id": uuid.uuid4(), "seq": seq, "request_id": request_id, "chain_version": chain.CHAIN_VERSION,
                    "purpose_id": purpose["id"], "purpose_key": purpose["key"], "version": previous_version + 1,
                    "action": status, "status": status, "previous_status": previous_status,
                    "collection_point_key": point_key, "notice_id": notice["id"], "notice_key": notice["key"],
                    "notice_version": notice["version"], "notice_sha256": notice["sha256"],
                    "notice_superseded_at": None, "disclosure_hash": decision.disclosure_hash or purpose["disclosure_hash"],
                    "method": "web", "actor_type": "subject", "actor_ref": None, "evidence_id": evidence_id,
                    "evidence_commitment": commitment, "occurred_at": now, "recorded_at": now, "reason": None,
                    "prev_hash": prev_hash,
                }
                doc = chain.document(row, tenant=tenant, subject_ref=subject_id)
                row["hash"] = prev_hash = chain.document_hash(doc)
                row["seal"] = keys.seal(secret, row["hash"])
                rows.append(row)
                printed.append({**doc, "hash": row["hash"]})
            receipt_id = uuid.uuid4()
            jws = signer.sign(receipts.payload(
                receipt_id=receipt_id, controller=app.state.controller, subject_ref=subject_id, recorded_at=now,
                events=printed, purposes=purposes), receipts.TYP)
            duties = _duties(tenant, subject_id, head["id"], now, secret, purposes, printed, app.state.controller)
            if evidence_id is not None:
                await conn.execute(INSERT_EVIDENCE, evidence_id, tenant, head["id"], ip, user_agent, commitment, now)
            for batch in ([r] for r in rows) if per_row else (rows,):
                await conn.execute(
                    INSERT_EVENTS, *([r[c] for r in batch] for c in EVENT_COLUMNS), tenant, head["id"], evidence_id,
                    commitment, now, app.state.collection_point_id, point_key, notice["id"], notice["key"],
                    notice["version"], notice["sha256"], request_id,
                )
            await conn.execute(INSERT_RECEIPT, receipt_id, tenant, head["id"], request_id, [r["id"] for r in rows],
                               jws, now)
            if duties.rows:
                await conn.execute(records.INSERT, duties.json())
        return _json({"subject_id": subject_id, "request_id": request_id, "recorded_at": now, "events": printed,
                      "receipt": {"id": receipt_id, "jws": jws}}, status_code=201)

    @app.get("/v1/subjects/{subject_id}/consents")
    async def current_state(subject_id: str) -> Response:
        rows = await app.state.pool.fetch(CURRENT_STATE, tenant, subject_id)
        if not rows:  # a subject only comes into being with its first decisions
            raise HTTPException(404, f"no subject {subject_id!r}")
        return _json({"subject_id": subject_id, "as_of": None, "consents": [dict(r) for r in rows]})

    @app.get("/v1/subjects/{subject_id}/consents/history")
    async def history(subject_id: str, after: int = 0, limit: int = Query(50, ge=1, le=500)) -> Response:
        rows = await app.state.pool.fetch(HISTORY, tenant, subject_id, after, limit + 1)
        if not rows and after == 0:
            raise HTTPException(404, f"no subject {subject_id!r}")
        items = [dict(r) for r in rows[:limit]]
        return _json({"subject_id": subject_id, "items": items,
                      "next_cursor": items[-1]["seq"] if len(rows) > limit else None})

    return app
