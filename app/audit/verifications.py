"""Tenant-wide verification runs (issue 11 point 4; scope audit:read; docs/audit.md).

POST starts a run of the caller's tenant, carried out by the worker (app/audit/verify_job.py):
202 with the new run, or 200 with the run already going (one per tenant at a time: a second POST
never starts a second pass over the whole tenant). GET shows progress and result. The run rows are
read from the primary: they are the worker's state (a replica would lag behind its progress).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request

from app.audit import verify_job
from app.audit.verification_schemas import VerificationCreate, VerificationPage, VerificationRead, read
from app.auth.deps import AuditRead
from app.core.db import LedgerReader
from app.core.errors import NotFound, problem_responses
from app.core.pagination import decode_cursor, encode_cursor
from app.core.responses import json_response

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=problem_responses(401, 403, 422))

GET = "SELECT * FROM verification_runs WHERE tenant_id = $1 AND id = $2"
LIST = """
SELECT * FROM verification_runs WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
ORDER BY created_at DESC, id DESC LIMIT $4
"""


@router.post("/verifications", operation_id="audit-verifications-start", response_model=VerificationRead,
             status_code=202, responses={200: {"model": VerificationRead, "description": "A run of this tenant is "
                                               "already going: that run (no second one is started)"}})
async def start_verification(request: Request, principal: AuditRead,
                             body: Annotated[VerificationCreate | None, Body()] = None):
    """Check every subject of the tenant (chains, states, notices and disclosures cited, evidence
    commitments, duty records, log entries), then the signed checkpoints against the log. Runs in
    the worker (`consent-ledger worker`) and survives its restart; follow it with GET."""
    batch = (body or VerificationCreate()).batch_subjects
    async with request.app.state.pool.acquire() as conn:
        row, started = await verify_job.start(conn, principal.tenant, principal.sub, batch)
    return json_response(read(row), status_code=202 if started else 200,
                         headers={"Location": f"/v1/audit/verifications/{row['id']}"})


@router.get("/verifications/{verification_id}", operation_id="audit-verifications-get",
            response_model=VerificationRead, responses=problem_responses(404))
async def get_verification(principal: AuditRead, pool: LedgerReader, verification_id: uuid.UUID):
    """Progress (subjects and events done of total, rate, times) and, once finished, the result."""
    row = await pool.fetchrow(GET, principal.tenant, verification_id)
    if row is None:
        raise NotFound(f"no verification {verification_id}")
    return json_response(read(row))


def _cursor(parts: list[str]) -> tuple[datetime, uuid.UUID]:
    created, run_id = parts
    return datetime.fromisoformat(created), uuid.UUID(run_id)


@router.get("/verifications", operation_id="audit-verifications-list", response_model=VerificationPage)
async def list_verifications(
    principal: AuditRead, pool: LedgerReader,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
):
    """The tenant's runs, newest first."""
    created, run_id = decode_cursor(cursor, _cursor) if cursor is not None else (None, None)
    rows = await pool.fetch(LIST, principal.tenant, created, run_id, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return json_response({"items": [read(r) for r in rows],
                          "next_cursor": encode_cursor(rows[-1]["created_at"].isoformat(), rows[-1]["id"]) if more
                          else None})
