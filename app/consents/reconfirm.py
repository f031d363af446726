"""The person's answer to a reconfirmation notice: `reconfirmed` (W3C DPV RenewedConsentGiven).

Network Act Art. 50(8), Decree Art. 62-3: every two years the sender asks whether the person keeps
their ad-reception consent. A `reconfirmed` event keeps the status granted, closes the open
reconfirmation duty and starts the next two years (app/duties/consequences.py); a withdrawal is an
ordinary withdrawal; silence keeps the consent (the sent notice is on the duty's record).
"""

from __future__ import annotations

import asyncpg

from app.auth.deps import Principal
from app.consents import idempotency, ledger
from app.consents.schemas import WithdrawalIn
from app.consents.service import PURPOSE_STATES, ClientInfo, Outcome, append, open_act
from app.core.errors import Conflict, NotFound
from app.proof.context import Proof


async def reconfirm(
    conn: asyncpg.Connection, principal: Principal, *, subject_id: str, purpose_key: str, body: WithdrawalIn,
    client: ClientInfo, idempotency_key: str | None, request_path: str, proof: Proof,
    key_ttl: float = idempotency.DEFAULT_TTL_SECONDS,
) -> Outcome:
    opened_act = await open_act(conn, principal, subject_id=subject_id, body=body, client=client,
                                idempotency_key=idempotency_key, request_path=request_path, key_ttl=key_ttl)
    if isinstance(opened_act, Outcome):
        return opened_act
    evidence, head = opened_act
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
    (event,), receipt, opened = await append(conn, principal, subject_id=subject_id, head=head, changes=[change],
                                             evidence=evidence, rows=[row], proof=proof)
    result = {"subject_id": subject_id, "event": event, "duties": opened.get(event["id"], []),
              "receipt": {"id": receipt[0], "jws": receipt[1]}}
    await idempotency.store(conn, principal.tenant, idempotency_key, 201, result)
    return Outcome(201, result)
