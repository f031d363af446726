"""The person's own view (PIPA Art. 35 access, Art. 37 withdrawal): `/v1/me/...` with a token of
scope `self` whose `sub` is the member id and whose tenant is the controller.

The same reads the operator routes make (app/consents/queries.py), on the token's own member id
only: no route here takes a member id, so nothing of anybody else can be named. Withdrawing is one
call, as easy as the grant was (Art. 37(1), Decree 44): the same withdrawal, by the subject.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request

from app.auth.deps import Principal, Self
from app.consents import queries, withdrawal
from app.consents.router import _client, _respond
from app.consents.schemas import HistoryPage, WithdrawalIn, WithdrawalResult
from app.core.db import LedgerReader, ledger_transaction
from app.core.errors import InvalidRequest, problem_responses
from app.core.responses import json_response, json_value
from app.core.schemas import UtcDatetime

router = APIRouter(prefix="/v1/me", tags=["me"], responses=problem_responses(401, 403, 404, 422))

# What the person was told for each purpose, beside its state: the legal basis and the wording shown
# at the act that set the state (the disclosure text its hash names), in Korean and English.
WORDING = """
SELECT p.key, p.legal_basis, p.category, e.disclosure_hash, d.content AS wording
FROM consent_events e
JOIN purposes p ON p.id = e.purpose_id
LEFT JOIN purpose_disclosures d ON d.purpose_id = e.purpose_id AND d.hash = e.disclosure_hash
WHERE e.id = ANY($1::uuid[])
"""
# The disclosure shown for a withdrawal is the grant's: the last event of the purpose that carried one.
SHOWN = """
SELECT DISTINCT ON (e.purpose_id) p.key, e.disclosure_hash, d.content AS wording
FROM subjects s JOIN consent_events e ON e.subject_id = s.id
JOIN purposes p ON p.id = e.purpose_id
LEFT JOIN purpose_disclosures d ON d.purpose_id = e.purpose_id AND d.hash = e.disclosure_hash
WHERE s.tenant_id = $1 AND s.external_id = $2 AND e.disclosure_hash IS NOT NULL AND e.recorded_at <= $3
ORDER BY e.purpose_id, e.seq DESC
"""
RECEIPTS = """
SELECT r.id, r.created_at AS issued_at, r.jws, cardinality(r.event_ids) AS events
FROM subjects s JOIN receipts r ON r.subject_id = s.id
WHERE s.tenant_id = $1 AND s.external_id = $2
ORDER BY r.created_at DESC, r.id LIMIT 500
"""


def _member(principal: Principal) -> str:
    """The member id the token speaks for (its `sub`), held to the operator routes' rule."""
    sub = principal.sub
    if not 1 <= len(sub) <= 255 or "\x00" in sub:
        raise InvalidRequest("the token's sub is not a member id (1-255 characters, no NUL)")
    return sub


FOREVER = datetime(9999, 12, 31, tzinfo=UTC)



@router.get("/consents", operation_id="me-consents")
async def my_consents(principal: Self, pool: LedgerReader,
                      as_of: Annotated[UtcDatetime | None, Query(description="The state as it was then")] = None):
    """My consents now (or as of an instant): each purpose's state, its legal basis, the wording I
    was shown, and its next duty (e.g. when I will be asked to reconfirm)."""
    member = _member(principal)
    state = await queries.state(pool, principal.tenant, member, as_of)
    rows = {r["key"]: r for r in await pool.fetch(WORDING, [c["last_event_id"] for c in state["consents"]])}
    shown = {r["key"]: r for r in await pool.fetch(SHOWN, principal.tenant, member, as_of or FOREVER)}
    for consent in state["consents"]:
        row = rows.get(consent["purpose"])
        words = shown.get(consent["purpose"])
        consent["legal_basis"] = row["legal_basis"] if row else None
        consent["category"] = row["category"] if row else None
        consent["wording"] = ({"disclosure_hash": words["disclosure_hash"], "content": json_value(words["wording"])}
                              if words else None)
    return json_response(state)


@router.get("/history", operation_id="me-history", response_model=HistoryPage)
async def my_history(principal: Self, pool: LedgerReader,
                     purpose: Annotated[str | None, Query(max_length=64)] = None,
                     cursor: Annotated[str | None, Query(max_length=200)] = None,
                     limit: Annotated[int, Query(ge=1, le=500)] = 50):
    """Every act recorded for me, in order, exactly as the ledger hashed it."""
    return json_response(await queries.history(pool, principal.tenant, _member(principal), purpose=purpose,
                                               cursor=cursor, limit=limit))


@router.get("/receipts", operation_id="me-receipts")
async def my_receipts(principal: Self, pool: LedgerReader):
    """My signed consent receipts (compact JWS), newest first; each verifies with the public key
    alone (/.well-known/consent-ledger/jwks.json)."""
    member = _member(principal)
    return json_response({"subject_id": member,
                          "items": [dict(r) for r in await pool.fetch(RECEIPTS, principal.tenant, member)]})


@router.post("/consents/{purpose}/withdraw", operation_id="me-withdraw", response_model=WithdrawalResult,
             responses=problem_responses(409))
async def my_withdrawal(purpose: str, request: Request, principal: Self, body: WithdrawalIn | None = None,
                        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None):
    """Withdraw my consent to one purpose: one call, as easy as giving it (PIPA Art. 37)."""
    body = body or WithdrawalIn()
    if body.actor.type != "subject":
        raise InvalidRequest("here the person acts themself", errors=[
            {"field": "body.actor.type", "reason": "subject (operators and guardians use the tenant's routes)"}])
    async with ledger_transaction(request) as conn:
        outcome = await withdrawal.withdraw(
            conn, principal, subject_id=_member(principal), body=body, purpose_key=purpose, client=_client(request),
            idempotency_key=idempotency_key, request_path=request.url.path, proof=request.app.state.proof,
            key_ttl=request.app.state.settings.idempotency_key_ttl_seconds)
    return _respond(outcome)
