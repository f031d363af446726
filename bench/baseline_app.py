"""The raw baseline: the rows of the project's three hot calls, written with plain FastAPI and an
asyncpg pool, to show what the same database work costs without the project's own layers.

Left out on purpose, because they are the project's costs being measured: JWT verification (the
Authorization header is ignored), the SQLAlchemy session, the idempotency fingerprint, the
per-request catalog lookup and consent-rule checks (the collection point's purposes are read once
at startup), and response-model validation. The chain hash is the project's own event_hash, so
both sides pay the same hashing cost.

Run by bench/run.py as `uvicorn bench.baseline_app:create_app --factory` with DATABASE_URL
(postgresql://...), BASELINE_TENANT, BASELINE_COLLECTION_POINT and BASELINE_POOL_SIZE set.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, AsyncIterator, Literal

import asyncpg
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from app.consents.chain import event_hash


class DecisionIn(BaseModel):
    purpose: str
    decision: Literal["granted", "refused"]


class RecordIn(BaseModel):
    collection_point: str
    notice_id: uuid.UUID
    decisions: list[DecisionIn] = Field(min_length=1)


LOCK_OR_CREATE = """
INSERT INTO subjects (id, tenant_id, external_id) VALUES (gen_random_uuid(), $1, $2)
ON CONFLICT (tenant_id, external_id) DO UPDATE SET last_seq = subjects.last_seq
RETURNING id, last_seq, last_hash, clock_timestamp() AS now, (xmax = 0) AS created
"""
STATES = "SELECT purpose_id, status, version FROM consent_states WHERE subject_id = $1"
INSERT_EVENT = """
INSERT INTO consent_events (
    id, tenant_id, subject_id, seq, purpose_id, version, action, status, previous_status, collection_point_id,
    notice_id, disclosure_hash, method, actor_type, ip, user_agent, occurred_at, recorded_at, request_id,
    prev_hash, hash
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'web', 'subject', $13, $14, $15, $15, $16, $17, $18)
"""
UPSERT_STATE = """
INSERT INTO consent_states (
    subject_id, purpose_id, tenant_id, status, version, since, last_event_id, notice_id, collection_point_id
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (subject_id, purpose_id) DO UPDATE SET
    status = EXCLUDED.status, version = EXCLUDED.version, since = EXCLUDED.since,
    last_event_id = EXCLUDED.last_event_id, notice_id = EXCLUDED.notice_id,
    collection_point_id = EXCLUDED.collection_point_id
"""
UPDATE_HEAD = "UPDATE subjects SET last_seq = $2, last_hash = $3 WHERE id = $1"

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
HISTORY = """
SELECT e.id, e.seq, p.key AS purpose, e.action, e.status, e.previous_status, e.version, e.collection_point_id,
       e.notice_id, e.disclosure_hash, e.method, e.actor_type, e.actor_ref, e.guardian, e.ip, e.user_agent,
       e.occurred_at, e.recorded_at, e.request_id, e.reason, e.prev_hash, e.hash
FROM subjects su
JOIN consent_events e ON e.subject_id = su.id
JOIN purposes p ON p.id = e.purpose_id
WHERE su.tenant_id = $1 AND su.external_id = $2 AND e.seq > $3
ORDER BY e.seq
LIMIT $4
"""
CATALOG = """
SELECT cp.id AS collection_point_id, p.id, p.key, p.disclosure_hash
FROM collection_points cp
JOIN collection_point_purposes cpp ON cpp.collection_point_id = cp.id
JOIN purposes p ON p.id = cpp.purpose_id
WHERE cp.tenant_id = $1 AND cp.key = $2
"""


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)  # UUIDs, asyncpg's own or the stdlib's


def _json(payload: Any, status_code: int = 200) -> Response:
    return Response(json.dumps(payload, default=_plain, ensure_ascii=False, separators=(",", ":")),
                    status_code=status_code, media_type="application/json")


def create_app() -> FastAPI:
    tenant = os.environ["BASELINE_TENANT"]
    point_key = os.environ["BASELINE_COLLECTION_POINT"]
    pool_size = int(os.environ["BASELINE_POOL_SIZE"])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(
            os.environ["DATABASE_URL"], min_size=pool_size, max_size=pool_size,
            server_settings={"application_name": "bench-baseline", "timezone": "UTC"},
        )
        rows = await pool.fetch(CATALOG, tenant, point_key)
        if not rows:
            raise RuntimeError(f"no collection point {point_key!r} for tenant {tenant!r}")
        app.state.pool = pool
        app.state.collection_point_id = rows[0]["collection_point_id"]
        app.state.purposes = {r["key"]: r for r in rows}
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
        if body.collection_point != point_key or any(d.purpose not in app.state.purposes for d in body.decisions):
            raise HTTPException(422, "unknown collection point or purpose")
        ip = request.client.host if request.client else None
        user_agent = request.headers.get("user-agent")
        request_id = uuid.uuid4()
        events = []
        async with app.state.pool.acquire() as conn, conn.transaction():
            head = await conn.fetchrow(LOCK_OR_CREATE, tenant, subject_id)
            states = {} if head["created"] else {
                r["purpose_id"]: (r["status"], r["version"]) for r in await conn.fetch(STATES, head["id"])}
            seq, prev_hash, now = head["last_seq"], head["last_hash"], head["now"]
            for decision in body.decisions:
                purpose = app.state.purposes[decision.purpose]
                previous_status, previous_version = states.get(purpose["id"], (None, 0))
                status = decision.decision
                if status == "refused" and previous_status == "granted":
                    status = "withdrawn"
                seq += 1
                event = {
                    "id": uuid.uuid4(), "tenant_id": tenant, "subject_id": head["id"], "seq": seq,
                    "purpose_id": purpose["id"], "version": previous_version + 1, "action": status,
                    "status": status, "previous_status": previous_status,
                    "collection_point_id": app.state.collection_point_id, "notice_id": body.notice_id,
                    "disclosure_hash": purpose["disclosure_hash"], "method": "web", "actor_type": "subject",
                    "actor_ref": None, "guardian": None, "ip": ip, "user_agent": user_agent, "occurred_at": now,
                    "recorded_at": now, "request_id": request_id, "reason": None, "prev_hash": prev_hash,
                }
                event["hash"] = prev_hash = event_hash(event)
                await conn.execute(
                    INSERT_EVENT, event["id"], tenant, head["id"], seq, purpose["id"], event["version"], status,
                    status, previous_status, app.state.collection_point_id, body.notice_id,
                    purpose["disclosure_hash"], ip, user_agent, now, request_id, event["prev_hash"], event["hash"],
                )
                await conn.execute(
                    UPSERT_STATE, head["id"], purpose["id"], tenant, status, event["version"], now, event["id"],
                    body.notice_id, app.state.collection_point_id,
                )
                events.append({**event, "purpose": decision.purpose})
            await conn.execute(UPDATE_HEAD, head["id"], seq, prev_hash)
        return _json({"subject_id": subject_id, "request_id": request_id, "recorded_at": now, "events": events},
                     status_code=201)

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
