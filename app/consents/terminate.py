"""The end of the relationship (account deletion, contract end): every granted consent is
withdrawn and every purpose processed without consent ends (`expired`), in one request, and each
purpose owes the destruction of its data when its retention ends (PIPA Art. 21; docs/duties.md)."""

from __future__ import annotations

import uuid

import asyncpg

from app.auth.deps import Principal
from app.consents import idempotency, ledger, receipts
from app.consents.schemas import WithdrawalIn
from app.consents.service import (
    PURPOSE_STATES, ClientInfo, Outcome, _check_occurred_at, _evidence, _outbox_purpose, _owed,
)
from app.core import metrics
from app.core.errors import NotFound

ENDS = {"granted": "withdrawn", "acknowledged": "expired"}
REASON = "the relationship ended (account terminated)"


async def terminate(
    conn: asyncpg.Connection, principal: Principal, *, subject_id: str, body: WithdrawalIn, client: ClientInfo,
    idempotency_key: str | None, request_path: str, proof, key_ttl: float = idempotency.DEFAULT_TTL_SECONDS,
) -> Outcome:
    replay = await idempotency.claim(conn, principal.tenant, idempotency_key, request_path, body, ttl_seconds=key_ttl)
    if replay:
        return Outcome(replay.status_code, replay.body, replayed=True)
    evidence = _evidence(principal, body, client)
    evidence.reason = body.reason or REASON
    head = await ledger.lock_subject(conn, principal.tenant, subject_id, create=False)
    if head is None:
        raise NotFound(f"no subject {subject_id!r}")
    _check_occurred_at(evidence, head)
    rows = await conn.fetch(PURPOSE_STATES, principal.tenant, head.id, [], None, True)
    ending = [r for r in rows if r["status"] in ENDS]
    changes = [ledger.Change(purpose_id=r["id"], purpose_key=r["key"], action=ENDS[r["status"]],
                             status=ENDS[r["status"]], previous_status=r["status"], previous_version=r["version"])
               for r in sorted(ending, key=lambda r: r["key"])]
    events, receipt, opened = [], None, {}
    if changes:
        by_key = {r["key"]: r for r in rows}
        batch = ledger.chain_onto(head, tenant=principal.tenant, subject_ref=subject_id, changes=changes,
                                  evidence=evidence, request_id=uuid.uuid4(), secret=proof.secret)
        receipt = receipts.sign(proof, subject_ref=subject_id, recorded_at=head.now, events=batch.printed,
                                purposes=by_key, controller=rows[0]["controller"])
        duties, opened = await _owed(conn, tenant=principal.tenant, subject_ref=subject_id, head=head,
                                     events=batch.printed, purposes=by_key, row=rows[0], secret=proof.secret,
                                     terminating=True)
        await ledger.write(conn, principal.tenant, subject_id, batch, receipt,
                           purposes={r["key"]: _outbox_purpose(r) for r in rows}, duties=duties, opened=opened)
        events = batch.printed
        metrics.consent_events_written((e["action"], by_key[e["purpose"]]["kind"]) for e in events)
    result = {"subject_id": subject_id, "events": events,
              "duties": [d for e in events for d in opened.get(e["id"], [])],
              "receipt": {"id": receipt[0], "jws": receipt[1]} if receipt else None}
    await idempotency.store(conn, principal.tenant, idempotency_key, 200, result)
    return Outcome(200, result)
