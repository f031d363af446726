"""What a consent certificate shows about one member, read in one snapshot.

The certificate is built from the reads that already serve the API, on one connection inside one
repeatable-read, read-only transaction: the per-subject verification (app/consents/verification.py)
first, then the history (app/consents/queries.py), the catalog rows the events cite (purposes,
the disclosure texts by hash, notice versions, collection points), the newest checkpoint whose
JWS verifies, and each event's inclusion proof against it (app/proof/proofs.py). So what the
verification judged is exactly what the page prints. Raw evidence (IP address, user agent,
guardian verification) is never read here: only its commitment, which the event carries.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

import asyncpg

from app.catalog import legal
from app.consents import queries, verification
from app.core.errors import InvalidRequest, NotFound
from app.core.hashing import canonical_json
from app.core.responses import json_value
from app.proof import checkpoint_rows, merkle, proofs
from app.proof.context import Proof

# A person's history is tens of acts; a certificate past this many would not be read on paper
# (the audit bundle and the export serve a history of any size).
MAX_EVENTS = 2000
PAGE = 500

TENANT = "SELECT id, name, name_en FROM tenants WHERE id = $1"
PURPOSES = """
SELECT p.key, p.kind, p.legal_basis, p.category, p.channel, p.disclosures,
       r.name AS recipient, r.name_en AS recipient_en
FROM purposes p LEFT JOIN recipients r ON r.id = p.recipient_id
WHERE p.tenant_id = $1 AND p.key = ANY($2::text[])
"""
# The legal basis each purpose had at an instant: its reclassifications, oldest first (PIPA Art. 15(1)).
BASIS_CHANGES = """
SELECT p.key, c.legal_basis_before, c.legal_basis, c.effective_from
FROM purpose_basis_changes c JOIN purposes p ON p.id = c.purpose_id
WHERE c.tenant_id = $1 AND p.key = ANY($2::text[])
ORDER BY c.effective_from, c.created_at
"""
DISCLOSURES = """
SELECT p.key, d.hash, d.content
FROM purpose_disclosures d JOIN purposes p ON p.id = d.purpose_id
WHERE d.tenant_id = $1 AND p.key = ANY($2::text[]) AND d.hash = ANY($3::text[])
"""
NOTICES = "SELECT id, key, version, title, sha256, effective_at FROM notices WHERE tenant_id = $1 AND id = ANY($2::uuid[])"
POINTS = "SELECT key, name, kind FROM collection_points WHERE tenant_id = $1 AND key = ANY($2::text[])"


@dataclass
class Act:
    """One event of the member's history as the certificate prints it."""

    event: dict[str, Any]  # the event exactly as the API prints it, with its `hash`
    canonical: str  # the RFC 8785 form of the event minus `hash`: SHA-256 of it is the hash
    legal_basis: str  # the purpose's basis when the act was recorded
    seal: str  # "sealed", "unsealed" (not the service's seal) or "legacy" (chain version 1, before seals)
    breaks: list[str]  # kinds of break the verification found at this event
    inclusion: dict[str, Any] | None  # RFC 9162 audit path against the certificate's checkpoint
    included: bool  # the audit path folds the event's hash to the checkpoint's root
    recorded_at: datetime


@dataclass
class PurposeLine:
    key: str
    kind: str
    category: str | None
    channel: str | None
    legal_basis: str
    section: str  # the form's section (legal.SECTION_TITLES)
    title_ko: str | None
    title_en: str | None
    recipient: str | None
    recipient_en: str | None
    acts: list[Act] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.acts[-1].event["status"]


@dataclass
class Certificate:
    tenant: str
    controller: str
    controller_en: str | None
    member: str
    issued_at: datetime
    purposes: list[PurposeLine]
    disclosures: dict[tuple[str, str], dict[str, Any]]  # (purpose, hash) -> the wording shown
    notices: dict[str, dict[str, Any]]  # notice id -> key, version, title, sha256, effective_at
    points: dict[str, dict[str, Any]]  # collection point key -> name, kind
    checkpoint: dict[str, Any] | None  # the newest checkpoint whose JWS verifies
    verification: dict[str, Any]  # app/consents/verification.py's report
    jwks_url: str
    requested_by: str | None  # the auditor token's `sub`; None: the person themself (/v1/me)
    acts_in_order: list[Act] = field(default_factory=list)


def _basis_at(changes: list[Mapping[str, Any]], current: str, at: datetime) -> str:
    """The basis in force at `at`: the last change that took effect by then, else what the first
    change replaced, else today's."""
    if not changes:
        return current
    i = bisect.bisect_right([c["effective_from"] for c in changes], at)
    return changes[i - 1]["legal_basis"] if i else changes[0]["legal_basis_before"]


def _seal(event: Mapping[str, Any], kinds: list[str]) -> str:
    if event["chain_version"] == 1:
        return "legacy"
    return "unsealed" if "unsealed_event" in kinds else "sealed"


def _section(row: Mapping[str, Any]) -> str:
    return row["category"] if row["legal_basis"] == legal.CONSENT else "without_consent"


async def _history(conn: asyncpg.Connection, tenant: str, member: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await queries.history(conn, tenant, member, purpose=None, cursor=cursor, limit=PAGE)
        events += page["items"]
        cursor = page["next_cursor"]
        if len(events) > MAX_EVENTS:
            raise InvalidRequest(
                f"the member has more than {MAX_EVENTS} events: too many for a certificate; use the audit "
                "export or bundle", errors=[{"field": "path.subject_id", "reason": f"more than {MAX_EVENTS} events"}])
        if cursor is None:
            return events


async def _inclusion(conn: asyncpg.Connection, tenant: str, event: Mapping[str, Any],
                     checkpoint: Mapping[str, Any] | None, proof: Proof) -> tuple[dict[str, Any] | None, bool]:
    """The event's audit path against the certificate's checkpoint, and whether it folds to its root
    (checked here too: the page states it, so the page's own numbers must bear it out)."""
    if checkpoint is None:
        return None, False
    try:
        found = await proofs.inclusion(conn, tenant, event["id"], checkpoint["tree_size"], proof=proof)
    except NotFound:  # recorded after the checkpoint: it enters the next one
        return None, False
    folds = merkle.verify_inclusion(bytes.fromhex(found["leaf_hash"]), found["leaf_index"], found["tree_size"],
                                    [bytes.fromhex(h) for h in found["audit_path"]],
                                    bytes.fromhex(checkpoint["root_hash"]))
    folds = folds and merkle.leaf_hash(bytes.fromhex(event["hash"])).hex() == found["leaf_hash"]
    return found, folds


async def gather(pool: asyncpg.Pool, tenant: str, member: str, *, proof: Proof, now: datetime,
                 jwks_url: str, requested_by: str | None) -> Certificate:
    """Everything the certificate of `member` (the tenant's member id) shows; 404 for a member the
    tenant does not have."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        checked = await verification.verify_in(conn, tenant, member, proof.secret)
        events = await _history(conn, tenant, member)
        keys = sorted({e["purpose"] for e in events})
        tenant_row = await conn.fetchrow(TENANT, tenant)
        if tenant_row is None:
            raise NotFound(f"no subject {member!r}")
        purposes = {r["key"]: r for r in await conn.fetch(PURPOSES, tenant, keys)}
        changes: dict[str, list[Mapping[str, Any]]] = {}
        for row in await conn.fetch(BASIS_CHANGES, tenant, keys):
            changes.setdefault(row["key"], []).append(row)
        hashes = sorted({e["disclosure_hash"] for e in events if e["disclosure_hash"]})
        disclosures = {(r["key"], r["hash"]): json_value(r["content"])
                       for r in await conn.fetch(DISCLOSURES, tenant, keys, hashes)}
        notice_ids = sorted({e["notice"]["id"] for e in events if e["notice"]})
        notices = {str(r["id"]): dict(r) for r in await conn.fetch(NOTICES, tenant, notice_ids)}
        point_keys = sorted({e["collection_point"] for e in events if e["collection_point"]})
        points = {r["key"]: dict(r) for r in await conn.fetch(POINTS, tenant, point_keys)}
        checkpoint = await checkpoint_rows.latest(conn, tenant, proof)
        inclusions = [await _inclusion(conn, tenant, e, checkpoint, proof) for e in events]

    kinds: dict[str, list[str]] = {}
    for b in checked["breaks"]:
        if b["event_id"] is not None:
            kinds.setdefault(str(b["event_id"]), []).append(b["kind"])
    lines: dict[str, PurposeLine] = {}
    for key in keys:
        row = purposes[key]
        text = json_value(row["disclosures"]) or {}
        lines[key] = PurposeLine(
            key=key, kind=row["kind"], category=row["category"], channel=row["channel"],
            legal_basis=row["legal_basis"], section=_section(row),
            title_ko=(text.get("ko") or {}).get("purpose"), title_en=(text.get("en") or {}).get("purpose"),
            recipient=row["recipient"], recipient_en=row["recipient_en"])
    ordered: list[Act] = []
    for event, (inclusion, included) in zip(events, inclusions):
        recorded = datetime.fromisoformat(event["recorded_at"].replace("Z", "+00:00"))
        found = kinds.get(event["id"], [])
        act = Act(event=event, canonical=canonical_json(
                      {k: v for k, v in event.items() if k != "hash"}).decode("utf-8"),
                  legal_basis=_basis_at(changes.get(event["purpose"], []), lines[event["purpose"]].legal_basis,
                                        recorded),
                  seal=_seal(event, found), breaks=found, inclusion=inclusion, included=included,
                  recorded_at=recorded)
        lines[event["purpose"]].acts.append(act)
        ordered.append(act)
    order = {section: i for i, section in enumerate(legal.SECTION_ORDER)}
    return Certificate(
        tenant=tenant, controller=tenant_row["name"], controller_en=tenant_row["name_en"], member=member,
        issued_at=now, purposes=sorted(lines.values(), key=lambda p: (order.get(p.section, len(order)), p.key)),
        disclosures=disclosures, notices=notices, points=points, checkpoint=checkpoint, verification=checked,
        jwks_url=jwks_url, requested_by=requested_by, acts_in_order=ordered)

