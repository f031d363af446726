"""Withdrawal (PIPA Art. 37): one purpose, several, or every granted one of a kind; what is not
granted is reported unchanged, never written twice."""

from __future__ import annotations

import asyncpg

from app.auth.deps import Principal
from app.catalog import legal
from app.consents import idempotency, ledger
from app.consents.schemas import BulkWithdrawalIn, WithdrawalIn
from app.consents.service import PURPOSE_STATES, ClientInfo, Outcome, append, open_act
from app.core.errors import Conflict, NotFound
from app.proof.context import Proof


async def withdraw(
    conn: asyncpg.Connection, principal: Principal, *, subject_id: str, body: WithdrawalIn | BulkWithdrawalIn,
    purpose_key: str | None, client: ClientInfo, idempotency_key: str | None, request_path: str, proof: Proof,
    key_ttl: float = idempotency.DEFAULT_TTL_SECONDS,
) -> Outcome:
    """Withdraw granted purposes; what is not granted is reported unchanged, never written twice."""
    opened_act = await open_act(conn, principal, subject_id=subject_id, body=body, client=client,
                                idempotency_key=idempotency_key, request_path=request_path, key_ttl=key_ttl)
    if isinstance(opened_act, Outcome):
        return opened_act
    evidence, head = opened_act

    named = [purpose_key] if purpose_key is not None else list(dict.fromkeys(getattr(body, "purposes", None) or []))
    kind = getattr(body, "kind", None) if purpose_key is None else None
    rows = await conn.fetch(PURPOSE_STATES, principal.tenant, head.id, named, kind, False)
    by_key = {r["key"]: r for r in rows}
    keys = named or sorted(r["key"] for r in rows if r["status"] is not None)
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise NotFound(f"no purpose with key {unknown[0]!r}",
                       errors=[{"field": "purposes", "reason": f"unknown purpose {k!r}"} for k in unknown])
    never = [k for k in keys if by_key[k]["status"] is None]
    if purpose_key is not None and by_key[purpose_key]["legal_basis"] != legal.CONSENT \
            and by_key[purpose_key]["status"] != "granted":
        basis = by_key[purpose_key]["legal_basis"]
        raise Conflict(f"{purpose_key!r} is processed without consent, on {basis} ({legal.LEGAL_BASES[basis]}): "
                       "there is no consent to withdraw (the person may ask for processing to be suspended, "
                       "PIPA Art. 37)")
    if purpose_key is not None and never:
        raise Conflict(f"subject {subject_id!r} has no recorded decision for {purpose_key!r}; nothing to withdraw")

    to_change = [by_key[k] for k in keys if by_key[k]["status"] == "granted"]
    changes = [
        ledger.Change(purpose_id=r["id"], purpose_key=r["key"], action="withdrawn", status="withdrawn",
                      previous_status="granted", previous_version=r["version"])
        for r in to_change
    ]
    events, receipt = [], None
    if changes:
        events, receipt, _ = await append(conn, principal, subject_id=subject_id, head=head, changes=changes,
                                          evidence=evidence, rows=rows, proof=proof)
    by_purpose = {e["purpose"]: e for e in events}
    results = []
    for key in keys:
        row = by_key[key]
        event = by_purpose.get(key)
        if event is not None:
            results.append({"purpose": key, "changed": True, "status": "withdrawn",
                            "detail": "consent withdrawn; processing for this purpose must stop",
                            "event": event})
        elif row["status"] is None:
            results.append({"purpose": key, "changed": False, "status": None,
                            "detail": "no consent was ever recorded for this purpose", "event": None})
        else:
            results.append({"purpose": key, "changed": False, "status": row["status"],
                            "detail": f"already {row['status']}; nothing new was written", "event": None})
    result = {"subject_id": subject_id, "results": results,
              "receipt": {"id": receipt[0], "jws": receipt[1]} if receipt else None}
    await idempotency.store(conn, principal.tenant, idempotency_key, 200, result)
    return Outcome(200, result)
