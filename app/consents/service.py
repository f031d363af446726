"""Recording decisions and withdrawals: the consent rules (invariants 1-4, 6, 7) live here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import asyncpg

from app.auth.deps import Principal
from app.catalog import legal
from app.consents import idempotency, ledger, receipts
from app.consents.schemas import ConsentRecord, DecisionIn, WithdrawalIn
from app.core import metrics
from app.core.errors import (
    Conflict, ConsentRuleViolation, FieldError, Forbidden, InvalidRequest, NotFound, RequiredConsentRefused,
)
from app.duties import clocks, consequences, records
from app.proof.context import Proof

CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class ClientInfo:
    """What the server itself saw of the caller."""

    ip: str | None
    user_agent: str | None


@dataclass(frozen=True)
class Outcome:
    status_code: int
    body: dict[str, Any]
    replayed: bool = False


def _evidence(principal: Principal, body: ConsentRecord | WithdrawalIn, client: ClientInfo) -> ledger.Evidence:
    ip, user_agent = client.ip, client.user_agent
    if body.evidence is not None:
        if not principal.has("evidence:forward"):
            raise Forbidden(
                "only a trusted backend (scope evidence:forward) may supply the end user's IP and user agent",
                errors=[{"field": "body.evidence", "reason": "needs scope evidence:forward"}],
            )
        ip = body.evidence.ip or ip
        user_agent = body.evidence.user_agent or user_agent
    return ledger.Evidence(
        method=body.method, actor_type=body.actor.type,
        actor_ref=principal.sub if body.actor.type == "operator" else None,
        guardian=body.actor.guardian.model_dump(mode="json") if body.actor.guardian else None,
        ip=ip, user_agent=user_agent, occurred_at=body.occurred_at,
    )


def _check_occurred_at(evidence: ledger.Evidence, head: ledger.Head) -> None:
    if evidence.occurred_at is not None and evidence.occurred_at > head.now + CLOCK_SKEW:
        raise InvalidRequest("occurred_at is in the future", errors=[
            {"field": "body.occurred_at", "reason": "must not be later than the server's clock (5 min skew allowed)"}])


# One round trip for the lock and the catalog: the subject is locked (or created) first, then the
# notice the form shows now (the latest published version in force, as the form route picks it)
# beside the version the request names, and the presented purposes with their disclosures. A
# request the catalog then refuses rolls back, subject and all. The catalog reads do not depend on
# the lock, so this statement's snapshot (taken before it waited for the lock) is current enough;
# the subject's states are read by a later statement, after the lock (app/consents/ledger.py).
CATALOG_FOR_RECORD = """
WITH head AS MATERIALIZED (SELECT * FROM ledger_lock_subject($1, $4, true))
SELECT head.id AS head_id, head.last_seq, head.last_hash, head.now AS head_now, head.created, catalog.*
FROM head LEFT JOIN (
SELECT cp.id AS collection_point_id, cp.notice_key, cp.for_children,
       cur.id AS current_id, cur.version AS current_version, cur.sha256 AS current_sha256,
       cur.effective_at AS current_effective_at,
       shown.version AS shown_version, shown.sha256 AS shown_sha256, prev.id AS previous_id,
       now() AS now, (SELECT jsonb_build_object('name', t.name, 'name_en', t.name_en) FROM tenants t
                      WHERE t.id = $1) AS controller,
       (SELECT to_jsonb(ts) FROM tenant_settings ts WHERE ts.tenant_id = $1) AS tenant_settings,
       p.id, p.key, p.kind, p.legal_basis, p.category, p.channel, p.disclosure_hash, p.retention,
       p.disclosures -> 'ko' AS disclosure_ko, cpp.position, cpp.condition_of_service
FROM collection_points cp
LEFT JOIN LATERAL (
    SELECT n.id, n.version, n.sha256, n.effective_at FROM notices n
    WHERE n.tenant_id = $1 AND n.key = cp.notice_key AND n.published_at IS NOT NULL AND n.effective_at <= now()
    ORDER BY n.effective_at DESC, n.published_at DESC LIMIT 1
) cur ON true
LEFT JOIN LATERAL (
    SELECT n.id FROM notices n
    WHERE n.tenant_id = $1 AND n.key = cp.notice_key AND n.published_at IS NOT NULL
      AND n.effective_at < cur.effective_at
    ORDER BY n.effective_at DESC, n.published_at DESC LIMIT 1
) prev ON true
LEFT JOIN notices shown ON shown.id = $3 AND shown.tenant_id = $1 AND shown.key = cp.notice_key
                       AND shown.published_at IS NOT NULL AND shown.effective_at <= now()
LEFT JOIN collection_point_purposes cpp ON cpp.collection_point_id = cp.id
LEFT JOIN purposes p ON p.id = cpp.purpose_id AND p.active
WHERE cp.tenant_id = $1 AND cp.key = $2
) catalog ON true
ORDER BY catalog.position
"""


def notice_shown(row: asyncpg.Record, notice_id: uuid.UUID, grace: timedelta) -> ledger.NoticeShown:
    """The version the request names must be the one the form shows now; the one in force right
    before it only within `grace` after the switch (a form loaded just before), recorded as such."""
    key = row["notice_key"]
    if row["current_id"] is None:
        raise Conflict(f"the collection point has no published notice {key!r} in force; publish one first")
    current = f"{row['current_version']!r} (id {row['current_id']})"
    if row["current_id"] == notice_id:
        return ledger.NoticeShown(id=notice_id, key=key, version=row["current_version"], sha256=row["current_sha256"])
    if row["shown_version"] is None:
        raise ConsentRuleViolation(
            "notice_id is not a published version of this collection point's notice in force",
            errors=[{"field": "body.notice_id",
                     "reason": f"must be the version the form shows: notice {key!r} version {current}"}],
        )
    if notice_id == row["previous_id"] and row["now"] <= row["current_effective_at"] + grace:
        return ledger.NoticeShown(id=notice_id, key=key, version=row["shown_version"], sha256=row["shown_sha256"],
                                  superseded_at=row["current_effective_at"])
    raise Conflict(
        f"notice {key!r} version {row['shown_version']!r} is no longer the one the form shows; show the form "
        f"again (current: version {current})",
        errors=[{"field": "body.notice_id", "reason": f"superseded by version {current}"}],
        extra={"current_notice": {"id": str(row["current_id"]), "key": key, "version": row["current_version"]}},
    )


async def _owed(conn: asyncpg.Connection, *, tenant: str, subject_ref: str, head: ledger.Head,
                events: list[dict[str, Any]], purposes: dict[str, Any], row: asyncpg.Record,
                secret: bytes, child: date | None = None, terminating: bool = False,
                reconsent: frozenset[str] = frozenset()) -> tuple[records.Builder, dict[str, list[dict[str, Any]]]]:
    """The duty records the events owe (app/duties/consequences.py), for the same statement."""
    ctx = consequences.Context(tenant=tenant, subject_ref=subject_ref, subject_id=head.id,
                               controller=row["controller"], settings=consequences.settings_of(row["tenant_settings"]),
                               purposes=purposes, child=child, terminating=terminating, reconsent=reconsent)
    if consequences.needs_lookup(ctx, events):
        await consequences.look_up(conn, ctx, events)
    builder = records.Builder(tenant=tenant, subject_ref=subject_ref, secret=secret, now=head.now)
    return builder, consequences.apply(builder, ctx, events)


def _outbox_purpose(r: asyncpg.Record) -> tuple:
    return r["key"], r["kind"], r["channel"], r["category"], r["legal_basis"]


def _required(purpose: asyncpg.Record) -> bool:
    """Refusing it fails the request: a condition of this service (only where the law allows one,
    PIPA Art. 16(3), 22(5)), or a purpose recorded as "required" before the legal model."""
    return purpose["condition_of_service"] or purpose["kind"] == "required"


def _check_decision(where: str, decision: DecisionIn, purpose: asyncpg.Record, method: str) -> list[FieldError]:
    errors = []
    if purpose["legal_basis"] != legal.CONSENT:
        if decision.decision != "acknowledged":
            errors.append(FieldError(
                field=f"{where}.decision",
                reason=f"{purpose['key']!r} is processed without consent, on {purpose['legal_basis']} "
                       f"({legal.LEGAL_BASES[purpose['legal_basis']]}): it is acknowledged, not granted or refused"))
    elif decision.decision == "acknowledged":
        errors.append(FieldError(field=f"{where}.decision",
                                 reason=f"{purpose['key']!r} rests on consent: granted or refused"))
    elif method == "agree_all" and decision.decision != "granted":
        errors.append(FieldError(field=f"{where}.decision",
                                 reason="method agree_all ('agree to all') grants every consent item it covers"))
    if decision.prechecked:
        errors.append(FieldError(field=f"{where}.prechecked",
                                 reason="a pre-checked box is not consent; the person must tick it themself"))
    if decision.disclosure_hash is None:
        errors.append(FieldError(field=f"{where}.disclosure_hash",
                                 reason="echo the disclosure_hash the form showed for this purpose"))
    elif decision.disclosure_hash != purpose["disclosure_hash"]:
        errors.append(FieldError(field=f"{where}.disclosure_hash",
                                 reason="the disclosures shown differ from the catalog's current ones"))
    return errors


def _check_decisions(body: ConsentRecord, presented: dict[str, asyncpg.Record]) -> None:
    errors: list[FieldError] = []
    seen: set[str] = set()
    for i, decision in enumerate(body.decisions):
        where = f"body.decisions[{i}]"
        if decision.purpose in seen:
            errors.append(FieldError(field=f"{where}.purpose", reason="a second decision for the same purpose"))
        seen.add(decision.purpose)
        purpose = presented.get(decision.purpose)
        if purpose is None:
            errors.append(FieldError(field=f"{where}.purpose",
                                     reason="this collection point does not present this purpose"))
            continue
        errors += _check_decision(where, decision, purpose, body.method)
    for key in presented:
        if key not in seen:
            errors.append(FieldError(field="body.decisions",
                                     reason=f"no decision for presented purpose {key!r}; silence is not a refusal "
                                            "to record by default"))
    if errors:
        raise ConsentRuleViolation(
            "the decisions do not match what the collection point presented; nothing was recorded", errors=errors
        )
    refused_required = [
        (i, d.purpose) for i, d in enumerate(body.decisions)
        if d.decision == "refused" and _required(presented[d.purpose])
    ]
    if refused_required:
        raise RequiredConsentRefused(
            "consents this service needs were refused, so the request fails as a whole and nothing was recorded",
            errors=[FieldError(field=f"body.decisions[{i}].decision",
                               reason=f"{key!r} is a condition of this service ({legal.CONDITION_ARTICLES})")
                    for i, key in refused_required],
        )


def _check_child(body: ConsentRecord, point: asyncpg.Record, head: ledger.Head) -> None:
    """A person the tenant declares under 14 is signed up by their legal guardian, verified as the
    Decree allows, at a form made for children (PIPA Art. 22-2; Decree Art. 17-2)."""
    if body.child is None:
        return
    errors = []
    if not point["for_children"]:
        errors.append(FieldError(field="body.child", reason=f"collection point {body.collection_point!r} is not a "
                                                           "form for children (for_children)"))
    if body.actor.type != "guardian":
        errors.append(FieldError(field="body.actor.type",
                                 reason="a child under 14 does not consent themself: their legal guardian does, "
                                        "verified as Decree Art. 17-2 allows (actor.guardian)"))
    today = clocks.kst_date(head.now)
    if body.child.turns_14_on <= today:
        errors.append(FieldError(field="body.child.turns_14_on",
                                 reason="the person is 14 or older: they consent themself"))
    elif body.child.turns_14_on > (clocks.add_years(today, 15) or today + timedelta(days=1)):
        errors.append(FieldError(field="body.child.turns_14_on", reason="more than 14 years ahead"))
    if errors:
        raise ConsentRuleViolation("a child's consent is their legal guardian's (PIPA Art. 22-2); nothing was "
                                   "recorded", errors=errors)


async def record(
    conn: asyncpg.Connection, principal: Principal, *, subject_id: str, body: ConsentRecord, client: ClientInfo,
    idempotency_key: str | None, request_path: str, proof: Proof,
    key_ttl: float = idempotency.DEFAULT_TTL_SECONDS,
) -> Outcome:
    replay = await idempotency.claim(conn, principal.tenant, idempotency_key, request_path, body, ttl_seconds=key_ttl)
    if replay:
        return Outcome(replay.status_code, replay.body, replayed=True)
    evidence = _evidence(principal, body, client)
    rows = await conn.fetch(CATALOG_FOR_RECORD, principal.tenant, body.collection_point, body.notice_id, subject_id)
    head = ledger.Head(id=rows[0]["head_id"], last_seq=rows[0]["last_seq"], last_hash=rows[0]["last_hash"],
                       now=rows[0]["head_now"], created=rows[0]["created"])
    if rows[0]["collection_point_id"] is None:
        raise NotFound(f"no collection point with key {body.collection_point!r}",
                       errors=[{"field": "body.collection_point", "reason": "unknown"}])
    notice = notice_shown(rows[0], body.notice_id, proof.notice_grace)
    presented = {r["key"]: r for r in rows if r["id"] is not None}
    _check_decisions(body, presented)
    _check_occurred_at(evidence, head)
    _check_child(body, rows[0], head)
    evidence.collection_point_id = rows[0]["collection_point_id"]
    evidence.collection_point_key = body.collection_point
    evidence.notice = notice
    states, reconsent = await ledger.current_states(conn, head.id) if not head.created else ({}, frozenset())
    changes = []
    for decision in body.decisions:
        purpose = presented[decision.purpose]
        previous_status, previous_version = states.get(purpose["id"], (None, 0))
        if decision.decision in ("granted", "acknowledged"):
            action = status = decision.decision
        elif previous_status == "granted":
            action = status = "withdrawn"  # unticking a granted box on a preference page
        else:
            action = status = "refused"
        changes.append(ledger.Change(
            purpose_id=purpose["id"], purpose_key=purpose["key"], action=action, status=status,
            previous_status=previous_status, previous_version=previous_version,
            disclosure_hash=decision.disclosure_hash,
        ))
    request_id = uuid.uuid4()
    batch = ledger.chain_onto(head, tenant=principal.tenant, subject_ref=subject_id, changes=changes,
                              evidence=evidence, request_id=request_id, secret=proof.secret)
    receipt = receipts.sign(proof, subject_ref=subject_id, recorded_at=head.now, events=batch.printed,
                            purposes=presented, controller=rows[0]["controller"])
    duties, opened = await _owed(conn, tenant=principal.tenant, subject_ref=subject_id, head=head,
                                 events=batch.printed, purposes=presented, row=rows[0], secret=proof.secret,
                                 child=body.child.turns_14_on if body.child else None, reconsent=reconsent)
    await ledger.write(conn, principal.tenant, subject_id, batch, receipt,
                       purposes={r["key"]: _outbox_purpose(r) for r in presented.values()}, duties=duties,
                       opened=opened)
    events = batch.printed
    metrics.consent_events_written((e["action"], presented[e["purpose"]]["kind"]) for e in events)
    result = {"subject_id": subject_id, "request_id": request_id, "recorded_at": head.now, "events": events,
              "receipt": {"id": receipt[0], "jws": receipt[1]}}
    await idempotency.store(conn, principal.tenant, idempotency_key, 201, result)
    return Outcome(201, result)


# The purposes named (or of a kind), with the subject's state of each, the controller and its duty
# settings: what a withdrawal or a reconfirmation needs, read after the subject's lock.
PURPOSE_STATES = """
SELECT p.id, p.key, p.kind, p.legal_basis, p.category, p.channel, p.retention,
       p.disclosures -> 'ko' AS disclosure_ko, s.status, s.version,
       (SELECT jsonb_build_object('name', t.name, 'name_en', t.name_en) FROM tenants t WHERE t.id = $1) AS controller,
       (SELECT to_jsonb(ts) FROM tenant_settings ts WHERE ts.tenant_id = $1) AS tenant_settings
FROM purposes p LEFT JOIN consent_states s ON s.purpose_id = p.id AND s.subject_id = $2
WHERE p.tenant_id = $1 AND (p.key = ANY($3::text[]) OR p.kind = $4 OR ($5 AND s.status IS NOT NULL))
"""


async def open_act(
    conn: asyncpg.Connection, principal: Principal, *, subject_id: str, body: WithdrawalIn, client: ClientInfo,
    idempotency_key: str | None, request_path: str, key_ttl: float, reason: str | None = None,
) -> Outcome | tuple[ledger.Evidence, ledger.Head]:
    """The start of an act on a known subject (withdraw, reconfirm, terminate): the first answer of a
    retried key (an Outcome), or the evidence and the subject's head, locked."""
    replay = await idempotency.claim(conn, principal.tenant, idempotency_key, request_path, body, ttl_seconds=key_ttl)
    if replay:
        return Outcome(replay.status_code, replay.body, replayed=True)
    evidence = _evidence(principal, body, client)
    evidence.reason = body.reason or reason
    head = await ledger.lock_subject(conn, principal.tenant, subject_id, create=False)
    if head is None:
        raise NotFound(f"no subject {subject_id!r}")
    _check_occurred_at(evidence, head)
    return evidence, head


async def append(
    conn: asyncpg.Connection, principal: Principal, *, subject_id: str, head: ledger.Head,
    changes: list[ledger.Change], evidence: ledger.Evidence, rows: list[asyncpg.Record], proof: Proof,
    terminating: bool = False,
) -> tuple[list[dict[str, Any]], tuple[uuid.UUID, str], dict[str, list[dict[str, Any]]]]:
    """Chain `changes` (purposes of `rows`, PURPOSE_STATES rows) onto the locked head and write them
    with their receipt, webhook messages and duties, in one statement; returns the printed events,
    the receipt (id, jws) and the duties each event opened."""
    by_key = {r["key"]: r for r in rows}
    batch = ledger.chain_onto(head, tenant=principal.tenant, subject_ref=subject_id, changes=changes,
                              evidence=evidence, request_id=uuid.uuid4(), secret=proof.secret)
    receipt = receipts.sign(proof, subject_ref=subject_id, recorded_at=head.now, events=batch.printed,
                            purposes=by_key, controller=rows[0]["controller"])
    duties, opened = await _owed(conn, tenant=principal.tenant, subject_ref=subject_id, head=head,
                                 events=batch.printed, purposes=by_key, row=rows[0], secret=proof.secret,
                                 terminating=terminating)
    await ledger.write(conn, principal.tenant, subject_id, batch, receipt,
                       purposes={r["key"]: _outbox_purpose(r) for r in rows}, duties=duties, opened=opened)
    metrics.consent_events_written((e["action"], by_key[e["purpose"]]["kind"]) for e in batch.printed)
    return batch.printed, receipt, opened
