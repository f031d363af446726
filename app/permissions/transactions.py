"""Transaction relationships (Network Act Art. 50(1)1): within 6 months of buying goods from the
sender, ads for the same kind of goods need no prior consent; a refusal still binds (50(2)).
Recorded as the goods category and the instant only, with the member id: no other personal data."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field

from app.auth.deps import ConsentsRead, ConsentsWrite
from app.consents import ledger
from app.core.db import LedgerReader, ledger_transaction
from app.core.errors import InvalidRequest, NotFound, problem_responses
from app.core.responses import json_response
from app.core.schemas import Key, UtcDatetime

router = APIRouter(prefix="/v1/subjects/{subject_id}", tags=["permissions"], responses=problem_responses(401, 403, 422))
SubjectId = Annotated[str, Path(min_length=1, max_length=255)]
SKEW = timedelta(minutes=5)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)

# The latest transaction of the goods at or before $4 whose 6 months (calendar months: PostgreSQL's
# interval arithmetic clamps 31 August + 6 months to the end of February) still cover $4.
CUSTOMER = """
SELECT t.id, t.goods_category, t.transacted_at FROM subject_transactions t
JOIN subjects s ON s.id = t.subject_id
WHERE s.tenant_id = $1 AND s.external_id = $2 AND t.goods_category = $3
  AND t.transacted_at <= $4 AND t.transacted_at + interval '6 months' >= $4
ORDER BY t.transacted_at DESC LIMIT 1
"""


class TransactionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    goods_category: Key = Field(description="The kind of goods or service bought, as the tenant's marketing "
                                            "purposes name it in `advertises`")
    transacted_at: UtcDatetime = Field(description="When the transaction took place (ISO 8601 with offset)")


class TransactionRead(BaseModel):
    id: uuid.UUID
    subject_id: str
    goods_category: str
    transacted_at: datetime
    recorded_by: str
    recorded_at: datetime


@router.post("/transactions", operation_id="transactions-record", status_code=status.HTTP_201_CREATED,
             response_model=TransactionRead)
async def record_transaction(subject_id: SubjectId, body: TransactionIn, request: Request, principal: ConsentsWrite):
    """Record that the person bought goods of `goods_category` at `transacted_at` (append-only)."""
    async with ledger_transaction(request) as conn:
        head = await ledger.lock_subject(conn, principal.tenant, subject_id, create=True)
        if body.transacted_at > head.now + SKEW or body.transacted_at < EARLIEST:
            raise InvalidRequest("transacted_at is not a plausible past instant", errors=[{
                "field": "body.transacted_at", "reason": "between 2000-01-01 and the server's clock (5 min skew)"}])
        row = await conn.fetchrow(
            """INSERT INTO subject_transactions (tenant_id, subject_id, goods_category, transacted_at, recorded_by)
               VALUES ($1, $2, $3, $4, $5) RETURNING id, goods_category, transacted_at, recorded_by, recorded_at""",
            principal.tenant, head.id, body.goods_category, body.transacted_at, principal.sub)
    return json_response({**dict(row), "subject_id": subject_id}, status_code=201)


@router.get("/transactions", operation_id="transactions-list", response_model=list[TransactionRead])
async def list_transactions(subject_id: SubjectId, principal: ConsentsRead, pool: LedgerReader):
    rows = await pool.fetch(
        """SELECT t.id, t.goods_category, t.transacted_at, t.recorded_by, t.recorded_at, s.id IS NOT NULL AS known
           FROM (SELECT 1) one LEFT JOIN subjects s ON s.tenant_id = $1 AND s.external_id = $2
           LEFT JOIN subject_transactions t ON t.subject_id = s.id
           ORDER BY t.transacted_at DESC LIMIT 1000""", principal.tenant, subject_id)
    if not rows[0]["known"]:
        raise NotFound(f"no subject {subject_id!r}")
    return json_response([{**{k: r[k] for k in ("id", "goods_category", "transacted_at", "recorded_by",
                                                  "recorded_at")}, "subject_id": subject_id}
                          for r in rows if r["id"] is not None])
