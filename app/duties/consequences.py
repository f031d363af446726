"""What a consent write owes afterwards: the duties its events create, close or cancel.

Called by the consent writes (app/consents/service.py) with the events as printed; the records
built here go into the same statement as the events (app/consents/ledger.py), so a committed act
always has its duties and a rolled-back one none. The rules (docs/duties.md):

- an ad-reception act (grant, refusal, withdrawal of a marketing purpose) owes the person a notice
  of its result within 14 days: one notice per request, however many channels it changed
  (Network Act Art. 50(7), Decree Art. 62-2);
- each ad-reception consent owes a reconfirmation before the same calendar date two years on
  (Art. 50(8), Decree Art. 62-3); a `reconfirmed` answer closes it and starts the next, a
  withdrawal cancels it;
- a withdrawal, or a refusal after a grant, owes from each processor that hears of that purpose a
  confirmation that it stopped (PIPA Art. 37; Decree Art. 41(2), 44(2): within 10 days).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg

from app.core.responses import json_value
from app.consents.chain import format_time
from app.duties import clocks
from app.duties.models import DEFAULT_LEAD_DAYS
from app.duties.records import Builder, Head
from app.webhooks import outbox

AD_ACTIONS = ("granted", "refused", "withdrawn")
ENDED = ("withdrawn", "expired")  # what the end of a relationship leaves of a granted or acknowledged purpose
STOPPED = ("withdrawn", "refused")
DEFAULT_INSTRUCTIONS = {
    "ko": "수신동의를 유지하시려면 별도 조치가 필요 없습니다. 철회를 원하시면 동의하신 것과 같은 방법(웹사이트·앱의 "
          "수신 설정 또는 고객센터)으로 언제든지 철회하실 수 있습니다.",
    "en": "To keep your consent, nothing is needed. To withdraw it, use the same way you gave it (the "
          "website's or app's preferences, or customer service), at any time.",
}

# Per purpose that stopped: the processors whose endpoints hear of it (the outbox's own match:
# app/webhooks/outbox.py MATCH), disabled endpoints included (their deliveries wait; the duty does not).
PROCESSORS = f"""
SELECT u.purpose, array_agg(DISTINCT p.key ORDER BY p.key) AS processors
FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
     AS u(purpose, kind, channel, category, type)
JOIN webhook_endpoints e ON e.tenant_id = $1 AND e.deleted_at IS NULL AND {outbox.MATCH.format(ev="u")}
JOIN processors p ON p.id = e.processor_id AND p.tenant_id = $1
GROUP BY u.purpose
"""
OPEN_KINDS = ["reconfirmation", "reconsent"]
OPEN = "SELECT * FROM ledger_lock_open_duties($1, $2, $3::text[], $4::text[])"
ASKED_AT_14 = ("SELECT EXISTS (SELECT 1 FROM duties WHERE subject_id = $1 AND kind = 'ask_at_14' "
               "AND status IN ('due', 'overdue'))")


@dataclass
class Context:
    tenant: str
    subject_ref: str
    subject_id: uuid.UUID
    controller: Mapping[str, Any]
    settings: Mapping[str, Any]
    purposes: Mapping[str, Mapping[str, Any]]  # key -> key, kind, channel, category, legal_basis
    child: date | None = None  # declared under 14: the day they turn 14
    terminating: bool = False  # the end of the relationship (POST /v1/subjects/{id}/terminate)
    reconsent: frozenset[str] = frozenset()  # purposes awaiting fresh consent (open reconsent duties)
    asked_at_14: bool = False  # an open ask_at_14 duty exists already
    open: dict[tuple[str, str], list[Head]] = field(default_factory=dict)
    processors: dict[str, list[str]] = field(default_factory=dict)


def _is_ad(purpose: Mapping[str, Any]) -> bool:
    """Ad reception (Network Act Art. 50): a marketing purpose bound to a channel, or night-time sending."""
    return purpose["kind"] == "marketing" and purpose["channel"] is not None


def _stopped(event: Mapping[str, Any]) -> bool:
    return event["previous_status"] == "granted" and event["status"] in STOPPED


def _sender(ctx: Context) -> dict[str, Any]:
    return {"name": ctx.controller["name"], "name_en": ctx.controller.get("name_en")}


def _act_at(event: Mapping[str, Any]) -> str:
    return event["occurred_at"] or event["recorded_at"]


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _touches_open(ctx: Context, event: Mapping[str, Any]) -> bool:
    """The event may close or cancel an open duty of its purpose."""
    return _stopped(event) or event["action"] == "reconfirmed" or (
        event["purpose"] in ctx.reconsent and event["status"] in ("granted", "refused", "withdrawn"))


def needs_lookup(ctx: Context, events: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the write must read open duties and subscribed processors first (withdrawals,
    reconfirmations, answers to a reconsent, a child: a plain grant or refusal needs nothing read)."""
    return ctx.child is not None or any(_touches_open(ctx, e) for e in events)


async def look_up(conn: asyncpg.Connection, ctx: Context, events: Sequence[Mapping[str, Any]]) -> None:
    """Lock the subject's open reconfirmations of the purposes touched (after the subject's lock:
    docs/duties.md) and find the processors of the purposes that stopped."""
    if ctx.child is not None:
        ctx.asked_at_14 = await conn.fetchval(ASKED_AT_14, ctx.subject_id)
    touched = sorted({e["purpose"] for e in events if _touches_open(ctx, e)})
    for row in await conn.fetch(OPEN, ctx.tenant, ctx.subject_id, OPEN_KINDS, touched):
        ctx.open.setdefault((row["kind"], row["purpose_key"]), []).append(Head.of(row))
    stopped = [ctx.purposes[k] for k in sorted({e["purpose"] for e in events if _stopped(e)})]
    if stopped:
        rows = await conn.fetch(PROCESSORS, ctx.tenant, [p["key"] for p in stopped], [p["kind"] for p in stopped],
                                [p["channel"] for p in stopped], [p["category"] for p in stopped],
                                ["consent.withdrawn"] * len(stopped))
        ctx.processors = {r["purpose"]: list(r["processors"]) for r in rows}


def _reconfirmation(builder: Builder, ctx: Context, event: Mapping[str, Any]) -> dict[str, Any]:
    purpose = ctx.purposes[event["purpose"]]
    announce, deadline = clocks.reconfirmation(_parse(_act_at(event)), ctx.settings["lead_days"])
    return builder.create(
        subject_id=ctx.subject_id, kind="reconfirmation", purpose_key=purpose["key"], notify_at=announce,
        due_at=deadline, cause=event,
        contents={"sender": _sender(ctx), "purpose": purpose["key"], "channel": purpose["channel"],
                  "consented_at": _act_at(event), "consented_on": str(clocks.kst_date(_parse(_act_at(event)))),
                  "how_to_keep_or_withdraw": ctx.settings.get("instructions") or DEFAULT_INSTRUCTIONS,
                  "article": "정보통신망법 제50조제8항, 시행령 제62조의3"})


def apply(builder: Builder, ctx: Context, events: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Build the records `events` owe; returns, per event id, the duties it opened (for the
    webhook messages and the API's answer)."""
    opened: dict[str, list[dict[str, Any]]] = {}

    def note(event: Mapping[str, Any], doc: dict[str, Any]) -> None:
        opened.setdefault(event["id"], []).append(
            {"duty_id": doc["duty_id"], "kind": doc["kind"], "processor": doc["processor"], "due_at": doc["due_at"]})

    if ctx.child is not None and not ctx.asked_at_14 and events:
        turns = clocks.start_of(ctx.child)
        note(events[-1], builder.create(
            subject_id=ctx.subject_id, kind="ask_at_14", notify_at=turns, cause=events[-1],
            due_at=turns + timedelta(days=clocks.ASK_AT_14_DAYS),
            contents={"turns_14_on": str(ctx.child), "article": "개인정보 보호법 제22조의2",
                      "given_by_guardian": sorted(e["purpose"] for e in events if e["status"] == "granted"),
                      "asks": "the person turns 14: ask them themself whether they keep the consents their "
                              "guardian gave, and record their own decisions"}))
    acts = [e for e in events if _is_ad(ctx.purposes[e["purpose"]]) and e["action"] in AD_ACTIONS
            and outbox.is_change(e)]
    if acts:
        last = acts[-1]
        doc = builder.create(
            subject_id=ctx.subject_id, kind="ad_result_notice", notify_at=builder.now,
            due_at=clocks.days_after(_parse(_act_at(last)), clocks.RESULT_NOTICE_DAYS), cause=last,
            contents={"sender": _sender(ctx), "article": "정보통신망법 제50조제7항, 시행령 제62조의2",
                      "acts": [{"purpose": e["purpose"], "channel": ctx.purposes[e["purpose"]]["channel"],
                                "action": e["action"], "result": e["status"], "at": _act_at(e),
                                "on": str(clocks.kst_date(_parse(_act_at(e)))), "event_id": e["id"]}
                               for e in acts]})
        note(last, doc)
    for event in events:
        purpose = ctx.purposes[event["purpose"]]
        for head in ctx.open.get(("reconsent", purpose["key"]), []):
            if event["action"] == "granted":  # given again, on the wording the form shows now
                builder.next(head, action="done", status="done",
                             detail={"answer": "granted", "event_id": event["id"], "at": _act_at(event),
                                     "disclosure_hash": event["disclosure_hash"]})
            elif event["status"] in ("refused", "withdrawn"):
                builder.next(head, action="cancelled", status="cancelled",
                             detail={"reason": f"consent {event['status']}", "event_id": event["id"],
                                     "at": _act_at(event)})
        if _is_ad(purpose):
            for head in ctx.open.get(("reconfirmation", purpose["key"]), []):
                if event["action"] == "reconfirmed":
                    builder.next(head, action="done", status="done",
                                 detail={"answer": "reconfirmed", "event_id": event["id"], "at": _act_at(event)})
                elif _stopped(event):
                    builder.next(head, action="cancelled", status="cancelled",
                                 detail={"reason": f"consent {event['status']}", "event_id": event["id"],
                                         "at": _act_at(event)})
            if event["action"] == "reconfirmed" or (event["status"] == "granted"
                                                    and event["previous_status"] != "granted"):
                note(event, _reconfirmation(builder, ctx, event))
        if _stopped(event) or (ctx.terminating and event["status"] in ENDED):
            rule = json_value(purpose.get("retention")) or {
                "until": "withdrawal" if purpose["legal_basis"] == "consent" else "termination"}
            if rule["until"] == "withdrawal" or ctx.terminating:
                note(event, _destruction(builder, ctx, event, purpose, rule))
        if _stopped(event):
            for processor in ctx.processors.get(purpose["key"], []):
                note(event, builder.create(
                    subject_id=ctx.subject_id, kind="suppression", purpose_key=purpose["key"],
                    processor_key=processor, notify_at=builder.now, cause=event,
                    due_at=clocks.days_after(_parse(_act_at(event)), clocks.SUPPRESSION_DAYS),
                    contents={"processor": processor, "purpose": purpose["key"], "channel": purpose["channel"],
                              "stopped": event["status"], "at": _act_at(event),
                              "article": "개인정보 보호법 제37조, 시행령 제41조제2항·제44조제2항",
                              "asks": "confirm that processing for this purpose stopped: POST /v1/duties/{id}/ack"}))
    return opened



def _destruction(builder: Builder, ctx: Context, event: Mapping[str, Any], purpose: Mapping[str, Any],
                 rule: Mapping[str, Any]) -> dict[str, Any]:
    """The data of a purpose whose processing ended is destroyed when its retention ends, within 5
    days; kept apart from other data until then (PIPA Art. 21(1), (3))."""
    ended = _parse(_act_at(event))
    end = clocks.retention_end(ended, rule)
    disclosure = json_value(purpose.get("disclosure_ko")) or {}
    return builder.create(
        subject_id=ctx.subject_id, kind="destruction", purpose_key=purpose["key"], notify_at=end, cause=event,
        due_at=clocks.days_after(end - timedelta(microseconds=1), clocks.DESTRUCTION_DAYS),
        contents={"purpose": purpose["key"], "items": disclosure.get("items"), "ended": event["status"],
                  "ended_at": _act_at(event), "termination": ctx.terminating, "retention": dict(rule),
                  "keep_apart_until": None if end == ended else format_time(end),
                  "article": "개인정보 보호법 제21조" + (f", {rule['statute']}" if rule.get("statute") else "")})


def settings_of(row: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """A tenant_settings row (as JSON text or decoded; None: the defaults) as the rules read it."""
    row = json_value(row) or {}
    return {"lead_days": row.get("reconfirmation_lead_days", DEFAULT_LEAD_DAYS),
            "instructions": row.get("withdrawal_instructions")}

