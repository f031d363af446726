"""GET /v1/subjects/{id}/permissions/{channel}: may an ad be sent to this person now?"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from app.auth.deps import PermissionsRead
from app.core.db import LedgerReader
from app.core.errors import problem_responses
from app.core.responses import json_response
from app.core.schemas import Key, UtcDatetime
from app.permissions import duty_reasons, rules, scope
from app.permissions.transactions import CUSTOMER

router = APIRouter(prefix="/v1/subjects/{subject_id}", tags=["permissions"], responses=problem_responses(401, 403, 422))

# The tenant's marketing consents (active ones: what it asks today) and the subject's last event on
# each at or before $3: the state then, from the events themselves (index subject, purpose, seq).
STATES_AT = """
SELECT p.key, p.channel, p.advertises, e.id, e.seq, e.action, e.status, e.recorded_at, e.hash, sub.id IS NOT NULL AS known
FROM (SELECT 1) AS one
LEFT JOIN subjects sub ON sub.tenant_id = $1 AND sub.external_id = $2
LEFT JOIN purposes p ON p.tenant_id = $1 AND p.category = 'marketing' AND p.legal_basis = 'consent' AND p.active
LEFT JOIN LATERAL (
    SELECT e.id, e.seq, e.action, e.status, e.recorded_at, e.hash FROM consent_events e
    WHERE e.subject_id = sub.id AND e.purpose_id = p.id AND e.recorded_at <= $3
    ORDER BY e.seq DESC LIMIT 1
) e ON true
ORDER BY p.key
"""





class EventRef(BaseModel):
    id: str
    seq: int
    action: str
    status: str
    recorded_at: datetime
    hash: str


class TransactionRef(BaseModel):
    id: str
    goods_category: str
    transacted_at: datetime


class DutyRef(BaseModel):
    id: str
    kind: str
    due_at: datetime


class Reason(BaseModel):
    code: str = Field(description="e.g. channel_granted, channel_withdrawn, marketing_refused, night_no_consent, "
                                  "night_exempt, channel_not_asked, existing_customer, subject_unknown")
    allows: bool = Field(description="Whether this reason, alone, would let the ad go")
    article: str
    detail: str
    purpose: str | None
    event: EventRef | None = Field(description="The event the reason rests on (the last one at `at`)")
    transaction: TransactionRef | None = Field(default=None, description="existing_customer: the transaction")
    duty: DutyRef | None = Field(default=None, description="reconfirmation_overdue: the duty not met in time")


class Permission(BaseModel):
    subject_id: str
    channel: str
    at: datetime
    at_local: str = Field(description="`at` in Korea Standard Time, which the night-time rule reads")
    allowed: bool
    reasons: list[Reason]


async def permission(pool: asyncpg.Pool, tenant: str, subject_id: str, channel: str, at: datetime,
                     goods: str | None = None) -> dict[str, Any]:
    rows = await pool.fetch(STATES_AT, tenant, subject_id, at)
    states = [rules.PurposeState(key=r["key"], channel=r["channel"], event=dict(r) if r["id"] else None,
                                 advertises=tuple(r["advertises"])) for r in rows if r["key"] is not None]
    customer = await pool.fetchrow(CUSTOMER, tenant, subject_id, goods, at) if goods else None
    answer = rules.decide(channel, at, states, goods, dict(customer) if customer else None)
    for duty in await pool.fetch(duty_reasons.OPEN, tenant, subject_id, at, channel,
                                  rules.is_night(at) and channel not in rules.NIGHT_EXEMPT):
        duty_reasons.add(answer, duty)
    if not rows[0]["known"]:
        answer.add("subject_unknown", False, rules.ARTICLES["channel"],
                   f"no subject {subject_id!r}: nothing was ever recorded for this member id")
    return {"subject_id": subject_id, "channel": channel, "at": at,
            "at_local": at.astimezone(rules.KST).isoformat(), "allowed": answer.allowed, "reasons": answer.reasons}


@router.get("/permissions/{channel}", operation_id="permissions-check", response_model=Permission)
async def check_permission(
    subject_id: Annotated[str, Path(min_length=1, max_length=255)],
    channel: Annotated[Literal["sms", "email", "push", "kakao", "phone"], Path(description="The advertising channel")],
    principal: PermissionsRead, pool: LedgerReader,
    at: Annotated[UtcDatetime | None, Query(description="ISO 8601 instant with offset (default: now)")] = None,
    category: Annotated[Key | None, Query(description="The goods category the ad is for: only consents whose "
                                                      "wording covers it count, and a transaction of the same "
                                                      "goods within 6 months stands in for consent "
                                                      "(Network Act Art. 50(1)1)")] = None,
):
    """May an ad go to this person by this channel at `at`? `allowed` with the reasons and the
    events they rest on: per-channel opt-in (Network Act Art. 50(1)), no sending after a refusal
    or withdrawal (50(2)), the umbrella marketing consent (PIPA Art. 22(1)7), night-time 21:00-08:00
    KST without night consent (50(3), Decree 61(2); email exempt). Answered from the events
    themselves, never from a cache: a withdrawal committed before the call is seen."""
    await scope.check_channel(pool, principal, channel)
    return json_response(await permission(pool, principal.tenant, subject_id, channel, at or datetime.now(UTC),
                                          category))
