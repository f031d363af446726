"""The end of the relationship (account deletion, contract end): every granted consent is
withdrawn and every purpose processed without consent ends (`expired`), in one request, and each
purpose owes the destruction of its data when its retention ends (PIPA Art. 21; docs/duties.md)."""

from __future__ import annotations

import asyncpg

from app.auth.deps import Principal
from app.consents import idempotency, ledger
from app.consents.schemas import WithdrawalIn
from app.consents.service import PURPOSE_STATES, ClientInfo, Outcome, append, open_act

ENDS = {"granted": "withdrawn", "acknowledged": "expired"}
REASON = "the relationship ended (account terminated)"


async def terminate(
    conn: asyncpg.Connection, principal: Principal, *, subject_id: str, body: WithdrawalIn, client: ClientInfo,
    idempotency_key: str | None, request_path: str, proof, key_ttl: float = idempotency.DEFAULT_TTL_SECONDS,
) -> Outcome:
    opened_act = await open_act(conn, principal, subject_id=subject_id, body=body, client=client,
                                idempotency_key=idempotency_key, request_path=request_path, key_ttl=key_ttl,
                                reason=REASON)
    if isinstance(opened_act, Outcome):
        return opened_act
    evidence, head = opened_act
    rows = await conn.fetch(PURPOSE_STATES, principal.tenant, head.id, [], None, True)
    ending = [r for r in rows if r["status"] in ENDS]
    changes = [ledger.Change(purpose_id=r["id"], purpose_key=r["key"], action=ENDS[r["status"]],
                             status=ENDS[r["status"]], previous_status=r["status"], previous_version=r["version"])
               for r in sorted(ending, key=lambda r: r["key"])]
    events, receipt, opened = [], None, {}
    if changes:
        events, receipt, opened = await append(conn, principal, subject_id=subject_id, head=head, changes=changes,
                                               evidence=evidence, rows=rows, proof=proof, terminating=True)
    result = {"subject_id": subject_id, "events": events,
              "duties": [d for e in events for d in opened.get(e["id"], [])],
              "receipt": {"id": receipt[0], "jws": receipt[1]} if receipt else None}
    await idempotency.store(conn, principal.tenant, idempotency_key, 200, result)
    return Outcome(200, result)
