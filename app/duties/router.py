"""Duty routes: list what is due or overdue, read one with its records, record fulfilment, a
processor's acknowledgement, and the tenant's duty settings (docs/duties.md)."""

from __future__ import annotations

import json

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.auth.deps import CatalogRead, CatalogWrite, DutiesAck, DutiesRead, DutiesWrite
from app.core import actor
from app.core.db import LedgerReader, ledger_transaction
from app.core.errors import problem_responses
from app.core.responses import json_response, json_value
from app.core.schemas import Key, UtcDatetime
from app.duties import service
from app.duties.schemas import AckIn, DutyDetail, DutyPage, DutySettings, FulfilmentIn, Kind, Status

router = APIRouter(prefix="/v1", tags=["duties"], responses=problem_responses(401, 403, 422))


@router.get("/duties", operation_id="duties-list", response_model=DutyPage)
async def list_duties(
    pool: LedgerReader, principal: DutiesRead,
    status: Annotated[Status | None, Query(description="`overdue` includes duties past their deadline the "
                                                       "scheduler has not marked yet")] = None,
    kind: Kind | None = None,
    subject_id: Annotated[str | None, Query(min_length=1, max_length=255)] = None,
    purpose: Key | None = None,
    processor: Key | None = None,
    due_before: UtcDatetime | None = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    counts: bool = False,
):
    """Duties by deadline. A processor's token sees only its own."""
    return json_response(await service.page(
        pool, principal, status=status, kind=kind, subject_id=subject_id, purpose=purpose, processor=processor,
        due_before=due_before, cursor=cursor, limit=limit, counts=counts))


@router.get("/duties/{duty_id}", operation_id="duties-get", response_model=DutyDetail,
            responses=problem_responses(404))
async def get_duty(duty_id: uuid.UUID, pool: LedgerReader, principal: DutiesRead):
    """One duty with its hash-chained records."""
    return json_response(await service.detail(pool, principal, duty_id))


@router.post("/duties/{duty_id}/fulfilment", operation_id="duties-fulfil", response_model=DutyDetail,
             status_code=201, responses={**problem_responses(404, 409), 200: {"description": "Already so recorded"}})
async def fulfil_duty(duty_id: uuid.UUID, body: FulfilmentIn, request: Request, principal: DutiesWrite):
    """Record how a duty was met (who, how, when). The same fulfilment again: 200, nothing written."""
    async with ledger_transaction(request) as conn:
        code, result = await service.fulfil(conn, principal, duty_id, body, request.app.state.proof.secret)
    return json_response(result, status_code=code)


@router.post("/duties/{duty_id}/ack", operation_id="duties-ack", response_model=DutyDetail, status_code=201,
             responses={**problem_responses(404, 409), 200: {"description": "Already acknowledged"}})
async def ack_duty(duty_id: uuid.UUID, body: AckIn, request: Request, principal: DutiesAck):
    """A processor confirms, with its own token, that it stopped processing after a withdrawal
    (PIPA Art. 37). The same acknowledgement again: 200, nothing written."""
    async with ledger_transaction(request) as conn:
        code, result = await service.ack(conn, principal, duty_id, body, request.app.state.proof.secret)
    return json_response(result, status_code=code)


SETTINGS = """
SELECT reconfirmation_lead_days, overdue_reconfirmation_denies, withdrawal_instructions
FROM tenant_settings WHERE tenant_id = $1
"""
SAVE = """
INSERT INTO tenant_settings (tenant_id, reconfirmation_lead_days, overdue_reconfirmation_denies,
                             withdrawal_instructions, updated_by, updated_at)
VALUES ($1, $2, $3, $4::text::jsonb, $5, now())
ON CONFLICT (tenant_id) DO UPDATE SET reconfirmation_lead_days = EXCLUDED.reconfirmation_lead_days,
    overdue_reconfirmation_denies = EXCLUDED.overdue_reconfirmation_denies,
    withdrawal_instructions = EXCLUDED.withdrawal_instructions, updated_by = EXCLUDED.updated_by, updated_at = now()
RETURNING reconfirmation_lead_days, overdue_reconfirmation_denies, withdrawal_instructions
"""


def _settings(row) -> dict:
    if row is None:
        return DutySettings().model_dump()
    return {**dict(row), "withdrawal_instructions": json_value(row["withdrawal_instructions"])}


@router.get("/settings/duties", operation_id="duty-settings-get", response_model=DutySettings)
async def get_settings(pool: LedgerReader, principal: CatalogRead):
    """The tenant's duty settings (defaults until set)."""
    return json_response(_settings(await pool.fetchrow(SETTINGS, principal.tenant)))


@router.put("/settings/duties", operation_id="duty-settings-put", response_model=DutySettings)
async def put_settings(body: DutySettings, request: Request, principal: CatalogWrite):
    """Set the lead time of reconfirmations (applies to those created afterwards), whether an
    overdue one denies the permission check, and the keep-or-withdraw wording of the notice."""
    async with ledger_transaction(request) as conn:
        await actor.declare(conn, principal.sub)
        row = await conn.fetchrow(SAVE, principal.tenant, body.reconfirmation_lead_days,
                                  body.overdue_reconfirmation_denies,
                                  None if body.withdrawal_instructions is None else
                                  json.dumps(body.withdrawal_instructions, ensure_ascii=False), principal.sub)
    return json_response(_settings(row))
