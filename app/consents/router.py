"""Subject routes: record decisions, withdraw, read state / as_of / history, verify the chain."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, status

from app.auth.deps import AuditRead, ConsentsRead, ConsentsWrite
from app.consents import evidence, queries, reconfirm, service, terminate, verification, withdrawal
from app.consents.schemas import (
    BulkWithdrawalIn, ChainVerification, ConsentRecord, EvidencePage, HistoryPage, ReconfirmResult, RecordResult, TerminationResult,
    StatePage, WithdrawalIn,
    WithdrawalResult,
)
from app.core.db import AuditReader, LedgerReader, ledger_transaction
from app.core.responses import json_response
from app.core.errors import problem_responses
from app.core.schemas import UtcDatetime

router = APIRouter(prefix="/v1/subjects/{subject_id}", tags=["consents"],
                   responses=problem_responses(401, 403, 404, 422))

SubjectId = Annotated[str, Path(min_length=1, max_length=255, description="The tenant's own opaque member id")]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="Retry with the same key returns the first result and writes nothing"),
]


def _client(request: Request) -> service.ClientInfo:
    return service.ClientInfo(ip=request.client.host if request.client else None,
                              user_agent=request.headers.get("user-agent"))


def _respond(outcome: service.Outcome):
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
    return json_response(outcome.body, status_code=outcome.status_code, headers=headers)


@router.post("/consents", operation_id="consents-record", status_code=status.HTTP_201_CREATED,
             response_model=RecordResult, responses=problem_responses(409))
async def record_consents(
    subject_id: SubjectId, body: ConsentRecord, request: Request, principal: ConsentsWrite,
    idempotency_key: IdempotencyKey = None,
):
    """Record one decision per presented purpose. Pre-checked, unpresented or missing decisions and
    refused required purposes fail the whole request; nothing is written then."""
    async with ledger_transaction(request) as conn:  # committed before the response is sent
        outcome = await service.record(
            conn, principal, subject_id=subject_id, body=body, client=_client(request),
            idempotency_key=idempotency_key, request_path=request.url.path,
            proof=request.app.state.proof, key_ttl=request.app.state.settings.idempotency_key_ttl_seconds,
        )
    return _respond(outcome)


@router.post("/consents/withdraw", operation_id="consents-withdraw-many", response_model=WithdrawalResult,
             responses=problem_responses(409))
async def withdraw_many(
    subject_id: SubjectId, body: BulkWithdrawalIn, request: Request, principal: ConsentsWrite,
    idempotency_key: IdempotencyKey = None,
):
    """Withdraw several purposes at once, e.g. `{"kind": "marketing"}` for every marketing consent."""
    async with ledger_transaction(request) as conn:
        outcome = await withdrawal.withdraw(
            conn, principal, subject_id=subject_id, body=body, purpose_key=None, client=_client(request),
            idempotency_key=idempotency_key, request_path=request.url.path,
            proof=request.app.state.proof, key_ttl=request.app.state.settings.idempotency_key_ttl_seconds,
        )
    return _respond(outcome)


@router.post("/consents/{purpose}/withdraw", operation_id="consents-withdraw", response_model=WithdrawalResult,
             responses=problem_responses(409))
async def withdraw_one(
    subject_id: SubjectId, purpose: str, request: Request, principal: ConsentsWrite,
    body: WithdrawalIn | None = None, idempotency_key: IdempotencyKey = None,
):
    """Withdraw one purpose. Withdrawing again writes nothing and says it was already withdrawn."""
    async with ledger_transaction(request) as conn:
        outcome = await withdrawal.withdraw(
            conn, principal, subject_id=subject_id, body=body or WithdrawalIn(), purpose_key=purpose,
            client=_client(request), idempotency_key=idempotency_key, request_path=request.url.path,
            proof=request.app.state.proof, key_ttl=request.app.state.settings.idempotency_key_ttl_seconds,
        )
    return _respond(outcome)


@router.post("/consents/{purpose}/reconfirm", operation_id="consents-reconfirm", status_code=status.HTTP_201_CREATED,
             response_model=ReconfirmResult, responses=problem_responses(409))
async def reconfirm_one(
    subject_id: SubjectId, purpose: str, request: Request, principal: ConsentsWrite,
    body: WithdrawalIn | None = None, idempotency_key: IdempotencyKey = None,
):
    """The person keeps an ad-reception consent when asked every two years (Network Act Art. 50(8)):
    a `reconfirmed` event; the open reconfirmation is done and the next one starts from today."""
    async with ledger_transaction(request) as conn:
        outcome = await reconfirm.reconfirm(
            conn, principal, subject_id=subject_id, body=body or WithdrawalIn(), purpose_key=purpose,
            client=_client(request), idempotency_key=idempotency_key, request_path=request.url.path,
            proof=request.app.state.proof, key_ttl=request.app.state.settings.idempotency_key_ttl_seconds,
        )
    return _respond(outcome)


@router.post("/terminate", operation_id="subjects-terminate", response_model=TerminationResult,
             responses=problem_responses(409))
async def terminate_subject(
    subject_id: SubjectId, request: Request, principal: ConsentsWrite, body: WithdrawalIn | None = None,
    idempotency_key: IdempotencyKey = None,
):
    """The relationship ended: every granted consent is withdrawn, every purpose processed without
    consent ends (`expired`), and each purpose's data is owed destruction when its retention ends
    (PIPA Art. 21: destruction duties). Again: nothing new is written."""
    async with ledger_transaction(request) as conn:
        outcome = await terminate.terminate(
            conn, principal, subject_id=subject_id, body=body or WithdrawalIn(), client=_client(request),
            idempotency_key=idempotency_key, request_path=request.url.path,
            proof=request.app.state.proof, key_ttl=request.app.state.settings.idempotency_key_ttl_seconds,
        )
    return _respond(outcome)


@router.get("/consents", operation_id="consents-state", response_model=StatePage)
async def get_state(
    subject_id: SubjectId, principal: ConsentsRead, conn: LedgerReader,
    as_of: Annotated[UtcDatetime | None, Query(description="ISO 8601 instant with offset: the state as it was then")] = None,
):
    return json_response(await queries.state(conn, principal.tenant, subject_id, as_of))


@router.get("/consents/history", operation_id="consents-history", response_model=HistoryPage)
async def get_history(
    subject_id: SubjectId, principal: ConsentsRead, conn: LedgerReader,
    purpose: Annotated[str | None, Query(description="Only this purpose's events")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
):
    return json_response(await queries.history(conn, principal.tenant, subject_id,
                                               purpose=purpose, cursor=cursor, limit=limit))


@router.get("/consents/verify", operation_id="consents-verify", response_model=ChainVerification)
async def verify_chain(subject_id: SubjectId, request: Request, principal: AuditRead, conn: AuditReader):
    """Check everything stored about the subject: every event row (the hash of its document, the
    links, the seals, time order), the head, the current state against the fold of the events, the
    notice and disclosure texts cited, the raw evidence against its commitments, and each event's
    place in the Merkle log. Every break is listed with its kind and where it is."""
    return json_response(await verification.verify(conn, principal.tenant, subject_id,
                                                   request.app.state.proof.secret))


@router.get("/evidence", operation_id="consents-evidence", response_model=EvidencePage)
async def get_evidence(subject_id: SubjectId, principal: AuditRead, conn: LedgerReader):
    """The raw evidence of the subject's acts (IP, user agent, guardian verification), kept apart from
    the chain and erasable: each row's `commitment` is what the events carry; purged rows keep only it."""
    return json_response(await evidence.for_subject(conn, principal.tenant, subject_id))
