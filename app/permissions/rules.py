"""May an ad go to this person on this channel at this instant? The rules, on states already read.

Network Act (정보통신망법) Art. 50: prior opt-in per channel (50(1)); nothing after a refusal or a
withdrawal (50(2)); between 21:00 and 08:00 a separate consent, except by email (50(3); Decree
Art. 61(2)). PIPA Art. 22(1)7: using personal data for marketing at all needs its own consent, so
a tenant's channel-less marketing consent (the umbrella) binds every channel. Pure functions:
app/permissions/service.py reads the events, this decides, every reason names what it rests on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from typing import Any

# Korea Standard Time: UTC+9, no daylight saving since 1988; a fixed offset needs no tz database.
KST = timezone(timedelta(hours=9), "KST")
NIGHT_START, NIGHT_END = time(21, 0), time(8, 0)
AD_CHANNELS = ("sms", "email", "push", "kakao", "phone")
NIGHT_EXEMPT = frozenset({"email"})

ARTICLES = {
    "channel": "Network Act Art. 50(1)",
    "existing_customer": "Network Act Art. 50(1)1",
    "refused": "Network Act Art. 50(2)",
    "umbrella": "PIPA Art. 22(1)7",
    "night": "Network Act Art. 50(3); Decree Art. 61(2)",
    "reconfirmation": "Network Act Art. 50(8); Decree Art. 62-3",
    "reconsent": "PIPA Art. 15(2), 17(2)",
}


@dataclass(frozen=True)
class PurposeState:
    """A marketing purpose and its last event at or before the instant asked about (None: never)."""

    key: str
    channel: str | None
    event: dict[str, Any] | None
    advertises: tuple[str, ...] = ()  # goods categories its wording covers; empty: any

    @property
    def status(self) -> str | None:
        return self.event["status"] if self.event else None


@dataclass
class Answer:
    allowed: bool = True
    reasons: list[dict[str, Any]] = field(default_factory=list)

    def add(self, code: str, allows: bool, article: str, detail: str, state: PurposeState | None = None) -> None:
        self.allowed = self.allowed and allows
        self.reasons.append({
            "code": code, "allows": allows, "article": article, "detail": detail,
            "purpose": state.key if state else None, "event": _event_ref(state.event) if state else None,
        })


def _event_ref(event: dict[str, Any] | None) -> dict[str, Any] | None:
    if event is None:
        return None
    return {name: event[name] for name in ("id", "seq", "action", "status", "recorded_at", "hash")}


def is_night(at: datetime) -> bool:
    local = at.astimezone(KST).time()
    return local >= NIGHT_START or local < NIGHT_END


def _consent(answer: Answer, code: str, article: str, states: list[PurposeState], what: str,
             customer: dict[str, Any] | None = None) -> None:
    """The consent `what` holds if one of `states` (purposes asking it) is granted; without one,
    a transaction `customer` of the same goods within 6 months stands in for it (Art. 50(1)1),
    unless the person refused or withdrew (Art. 50(2))."""
    said_no = any(s.status in ("refused", "withdrawn") for s in states)
    if customer is not None and not said_no and not any(s.status == "granted" for s in states):
        answer.add("existing_customer", True, ARTICLES["existing_customer"],
                   f"no consent to {what} is needed for {customer['goods_category']!r}: a transaction of the same "
                   f"goods on {customer['transacted_at']:%Y-%m-%d}, within 6 months; a refusal would still bind "
                   "(Art. 50(2))")
        answer.reasons[-1]["transaction"] = {"id": customer["id"], "goods_category": customer["goods_category"],
                                             "transacted_at": customer["transacted_at"]}
        return
    if not states:
        answer.add(f"{code}_not_asked", False, article, f"the catalog has no consent purpose for {what}: no consent "
                                                        "was ever asked, so none was given")
        return
    granted = [s for s in states if s.status == "granted"]
    if granted:
        answer.add(f"{code}_granted", True, article, f"consent to {what} is granted", granted[0])
        return
    for state in states:
        status = state.status
        if status is None:
            answer.add(f"{code}_no_consent", False, article, f"no decision on {what} recorded ({state.key!r})", state)
        elif status in ("refused", "withdrawn"):
            answer.add(f"{code}_{status}", False, f"{article}; {ARTICLES['refused']}",
                       f"consent to {what} was {status} ({state.key!r}): nothing may be sent after it", state)
        else:
            answer.add(f"{code}_{status}", False, article, f"consent to {what} is {status} ({state.key!r})", state)


def decide(channel: str, at: datetime, purposes: list[PurposeState], goods: str | None = None,
           customer: dict[str, Any] | None = None) -> Answer:
    """`purposes`: the tenant's marketing consent purposes with the subject's last event on each;
    `goods`: the category of goods the ad is for (then only consents whose wording covers it
    count); `customer`: the subject's latest transaction of those goods within 6 months before
    `at`, if any."""
    answer = Answer()
    if goods is not None:
        purposes = [p for p in purposes if not p.advertises or goods in p.advertises]
    umbrella = [p for p in purposes if p.channel is None]
    if umbrella:  # a tenant that asks one marketing consent for every channel
        _consent(answer, "marketing", ARTICLES["umbrella"], umbrella, "marketing use of personal data", customer)
    _consent(answer, "channel", ARTICLES["channel"], [p for p in purposes if p.channel == channel],
             f"advertising by {channel}" + (f" of {goods!r}" if goods else ""), customer)
    if is_night(at):
        local = at.astimezone(KST).strftime("%H:%M")
        if channel in NIGHT_EXEMPT:
            answer.add("night_exempt", True, ARTICLES["night"], f"{local} KST is night-time, but email is exempt")
        else:
            _consent(answer, "night", ARTICLES["night"], [p for p in purposes if p.channel == "night"],
                     f"advertising at night ({local} KST, between 21:00 and 08:00)")
    return answer
