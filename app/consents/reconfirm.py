"""The person's answer to a reconfirmation notice: `reconfirmed` (W3C DPV RenewedConsentGiven).

Network Act Art. 50(8), Decree Art. 62-3: every two years the sender asks whether the person keeps
their ad-reception consent. A `reconfirmed` event keeps the status granted, closes the open
reconfirmation duty and starts the next two years (app/duties/consequences.py); a withdrawal is an
ordinary withdrawal; silence keeps the consent (the sent notice is on the duty's record).
"""

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
from app.core.errors import Conflict, NotFound
from app.proof.context import Proof


async def reconfirm(
    conn: asyncpg.Connection, principal: Principal, *, subject_id: str, purpose_key: str, body: WithdrawalIn,
    client: ClientInfo, idempotency_key: str | None, request_path: str, proof: Proof,
    key_ttl: float = idempotency.DEFAULT_TTL_SECONDS,
) -> Outcome:
    replay = await idempotency.claim(conn, principal.tenant, idempotency_key, request_path, body, ttl_seconds=key_ttl)
    if replay:
        return Outcome(replay.status_code, replay.body, replayed=True)
    evidence = _evidence(principal, body, client)
    evidence.reason = body.reason
    head = await ledger.lock_subject(conn, principal.tenant, subject_id, create=False)
    if head is None:
        raise NotFound(f"no subject {subject_id!r}")
    _check_occurred_at(evidence, head)
    rows = await conn.fetch(PURPOSE_STATES, principal.tenant, head.id, [purpose_key], None, False)
    if not rows:
        raise NotFound(f"no purpose with key {purpose_key!r}")
    row = rows[0]
    if row["kind"] != "marketing" or row["channel"] is None:
        raise Conflict(f"{purpose_key!r} is not an ad-reception consent: only those are reconfirmed every two "
                       "years (Network Act Art. 50(8))")
    if row["status"] != "granted":
        raise Conflict(f"only a granted consent is reconfirmed; {purpose_key!r} is "
                       f"{row['status'] or 'not recorded'} for subject {subject_id!r}")
    change = ledger.Change(purpose_id=row["id"], purpose_key=row["key"], action="reconfirmed", status="granted",
                           previous_status="granted", previous_version=row["version"])
    batch = ledger.chain_onto(head, tenant=principal.tenant, subject_ref=subject_id, changes=[change],
                              evidence=evidence, request_id=uuid.uuid4(), secret=proof.secret)
    receipt = receipts.sign(proof, subject_ref=subject_id, recorded_at=head.now, events=batch.printed,
                            purposes={row["key"]: row}, controller=row["controller"])
    purposes = {row["key"]: row}
    duties, opened = await _owed(conn, tenant=principal.tenant, subject_ref=subject_id, head=head,
                                 events=batch.printed, purposes=purposes, row=row, secret=proof.secret)
    await ledger.write(conn, principal.tenant, subject_id, batch, receipt, purposes={row["key"]: _outbox_purpose(row)},
                       duties=duties, opened=opened)
    metrics.consent_events_written([("reconfirmed", row["kind"])])
    event = batch.printed[0]
    result = {"subject_id": subject_id, "event": event, "duties": opened.get(event["id"], []),
              "receipt": {"id": receipt[0], "jws": receipt[1]}}
    await idempotency.store(conn, principal.tenant, idempotency_key, 201, result)
    return Outcome(201, result)
