"""Consent receipts: one signed record (compact JWS, EdDSA) per recording or withdrawal.

Shaped after the Kantara Consent Receipt 1.1 (its member names: consentReceiptID, piiPrincipalId,
piiControllers, services/purposes, ...) and ISO/IEC TS 27560 (legal basis, status, notice, the
event each line rests on), so a person or an auditor holds proof that needs nothing but the
public key: `GET /.well-known/consent-ledger/jwks.json`. The event hashes tie the receipt to the
ledger; `GET /v1/receipts/{id}` adds their inclusion proofs once a checkpoint covers them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Mapping

import asyncpg

from app.core.errors import NotFound
from app.proof import proofs
from app.proof.context import Proof

TYP = "consent-receipt+jwt"
VERSION = "KI-CR-v1.1.0"
# Each line carries its purpose's legal basis (app/catalog/legal.py): consent lines are EXPLICIT
# consent; a purpose processed without consent is a notice the person acknowledged.
LEGAL_BASIS = "consent"
CONSENT_TYPE = "EXPLICIT"
NOTICE_TYPE = "NOTICE_ACKNOWLEDGED"

def _purpose(event: Mapping[str, Any], purpose: Mapping[str, Any]) -> dict[str, Any]:
    text = purpose.get("disclosure_ko") or {}  # the Korean disclosures shown (receipt language "ko")
    return {
        "purpose": event["purpose"],
        "purposeCategory": [purpose.get("category") or purpose["kind"]],
        "consentType": CONSENT_TYPE if event["action"] != "acknowledged" else NOTICE_TYPE,
        "legalBasis": purpose.get("legal_basis") or LEGAL_BASIS,
        "purposeDescription": text.get("purpose"),
        "piiCategory": text.get("items") or [],
        "termination": text.get("retention"),
        "thirdPartyDisclosure": purpose.get("category") in ("third_party", "overseas_transfer")
                                or purpose["kind"] == "third_party",
        "thirdPartyName": text.get("recipient"),
        "channel": purpose.get("channel"),
        "action": event["action"],
        "status": event["status"],
        "previousStatus": event["previous_status"],
        "version": event["version"],
        "disclosureHash": event["disclosure_hash"],
        "eventId": event["id"],
        "eventHash": event["hash"],
    }


def payload(*, receipt_id: uuid.UUID, controller: Mapping[str, Any], subject_ref: str, recorded_at: datetime,
            events: list[Mapping[str, Any]], purposes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    first = events[0]
    return {
        "version": VERSION,
        "jurisdiction": "KR",
        "consentTimestamp": int(recorded_at.timestamp()),
        "collectionMethod": first["method"],
        "consentReceiptID": str(receipt_id),
        "language": "ko",
        "piiPrincipalId": subject_ref,
        "piiControllers": [{"piiController": controller["name"], "piiControllerEn": controller["name_en"],
                            "tenant": first["tenant"], "onBehalf": False}],
        "policyUrl": None,
        "services": [{"service": controller["name"],
                      "purposes": [_purpose(e, purposes[e["purpose"]]) for e in events]}],
        "sensitive": any(purposes[e["purpose"]]["kind"] == "sensitive" for e in events),
        "spiCat": [],
        "collectionPoint": first["collection_point"],
        "notice": first["notice"],
        "actor": first["actor"],
        "requestId": first["request_id"],
        "recordedAt": first["recorded_at"],
        "occurredAt": first["occurred_at"],
        "iat": int(recorded_at.timestamp()),
        "jti": str(receipt_id),
        "sub": subject_ref,
    }


def sign(proof: Proof, *, subject_ref: str, recorded_at: datetime, events: list[Mapping[str, Any]],
         purposes: Mapping[str, Mapping[str, Any]], controller: Mapping[str, Any]) -> tuple[uuid.UUID, str]:
    """(receipt id, compact JWS) for `events` as printed; the caller stores it with the events."""
    receipt_id = uuid.uuid4()
    return receipt_id, proof.signer.sign(payload(
        receipt_id=receipt_id, controller=controller, subject_ref=subject_ref, recorded_at=recorded_at,
        events=events, purposes=purposes), TYP)


RECEIPT = """
SELECT r.id, r.jws, r.event_ids, r.created_at, s.external_id
FROM receipts r JOIN subjects s ON s.id = r.subject_id
WHERE r.id = $1 AND r.tenant_id = $2
"""


async def fetch(pool: asyncpg.Pool, tenant: str, receipt_id: uuid.UUID, proof: Proof) -> dict[str, Any]:
    """The receipt as issued, with each event's inclusion proof against the newest checkpoint (or
    `pending` until a checkpoint covers it)."""
    row = await pool.fetchrow(RECEIPT, receipt_id, tenant)
    if row is None:
        raise NotFound(f"no receipt {receipt_id}")
    inclusions = []
    for event_id in row["event_ids"]:
        try:
            inclusions.append({"event_id": event_id, "pending": False,
                               **await proofs.inclusion(pool, tenant, event_id, proof=proof)})
        except NotFound as exc:
            if not exc.extra.get("pending"):
                raise
            inclusions.append({"event_id": event_id, "pending": True})
    return {"id": row["id"], "subject_id": row["external_id"], "issued_at": row["created_at"], "jws": row["jws"],
            "inclusion": inclusions}
