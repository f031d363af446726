"""Duties that bear on sending an ad (docs/duties.md), for the single and the audience check alike.

Open at the instant asked about, for the channel's consent, the channel-less marketing consent or
(at night, but for email) the night-time one: a reconfirmation past its deadline (Network Act Art.
50(8)), which denies only when the tenant says so (tenant_settings.overdue_reconfirmation_denies);
a fresh consent owed after a material change of wording (PIPA Art. 15(2)), which always denies.
"""

from __future__ import annotations

from typing import Any, Mapping

from app.permissions import rules

# Joined to duties `d` of the tenant $1: its purpose (this channel's, the channel-less or the
# night-time marketing consent) and the tenant's setting; open at {at}.
_JOINS = """
JOIN purposes p ON p.tenant_id = d.tenant_id AND p.key = d.purpose_key AND p.category = 'marketing'
               AND (p.channel = {channel} OR p.channel IS NULL OR (p.channel = 'night' AND {night}))
LEFT JOIN tenant_settings ts ON ts.tenant_id = d.tenant_id
"""
_OPEN_AT = """
d.tenant_id = $1 AND d.kind IN ('reconfirmation', 'reconsent') AND d.created_at <= {at}
AND CASE d.kind WHEN 'reconfirmation' THEN d.due_at <= {at} ELSE d.notify_at <= {at} END
AND (d.closed_at IS NULL OR d.closed_at > {at})
"""
_DENIES = "(d.kind = 'reconsent' OR coalesce(ts.overdue_reconfirmation_denies, false))"
_ONE = {"at": "$3", "channel": "$4", "night": "$5"}
_ALL = {"at": "$2", "channel": "$3", "night": "$4"}
# One member id: $1 tenant, $2 member id, $3 instant, $4 channel, $5 whether the night rule applies.
OPEN = f"""
SELECT d.id, d.kind, d.purpose_key, d.due_at, d.notify_at, {_DENIES} AS denies
FROM subjects sub JOIN duties d ON d.subject_id = sub.id {_JOINS.format(**_ONE)}
WHERE sub.tenant_id = $1 AND sub.external_id = $2 AND {_OPEN_AT.format(**_ONE)}
ORDER BY d.due_at
"""
# Whether any member of the tenant has a duty that denies ($1 tenant, $2 instant, $3 channel, $4
# night): a few index probes; only then does the audience check look its chunks up (DENYING).
ANY_DENYING = f"""
SELECT EXISTS (SELECT 1 FROM duties d {_JOINS.format(**_ALL)}
               WHERE d.status IN ('due', 'overdue') AND {_OPEN_AT.format(**_ALL)} AND {_DENIES})
"""
# The same for an instant in the past: duties closed since count too (slower: every duty of the tenant).
ANY_DENYING_THEN = f"""
SELECT EXISTS (SELECT 1 FROM duties d {_JOINS.format(**_ALL)} WHERE {_OPEN_AT.format(**_ALL)} AND {_DENIES})
"""
# The member ids of $5 (an array) with a duty that denies, and its kind.
DENYING = f"""
SELECT DISTINCT ON (sub.external_id) sub.external_id, d.kind, d.purpose_key
FROM unnest($5::text[]) AS ids(external_id)
JOIN subjects sub ON sub.tenant_id = $1 AND sub.external_id = ids.external_id
JOIN duties d ON d.subject_id = sub.id {_JOINS.format(**_ALL)}
WHERE {_OPEN_AT.format(**_ALL)} AND {_DENIES}
ORDER BY sub.external_id, d.kind
"""
CODES = {"reconsent": "reconsent_required", "reconfirmation": "reconfirmation_overdue"}


def detail(duty: Mapping[str, Any]) -> tuple[str, str, str]:
    """(code, article, detail) of a duty's reason."""
    if duty["kind"] == "reconsent":
        return (CODES["reconsent"], rules.ARTICLES["reconsent"],
                f"the wording of {duty['purpose_key']!r} changed materially; the consent was given on the wording "
                "before, so it must be given again before the ad goes")
    due = f" before {duty['due_at'].astimezone(rules.KST):%Y-%m-%d %H:%M} KST" if duty.get("due_at") else ""
    return (CODES["reconfirmation"], rules.ARTICLES["reconfirmation"],
            f"the 2-year reconfirmation of {duty['purpose_key']!r} was due{due} and was not sent in time")


def add(answer: rules.Answer, duty: Mapping[str, Any]) -> None:
    """The duty as one of the single check's reasons."""
    code, article, text = detail(duty)
    denies = duty["denies"]
    if code == CODES["reconfirmation"]:
        text += ("; the tenant's setting makes this deny" if denies else
                 "; the consent stands (silence or a late notice does not end it), the duty is overdue")
    answer.allowed = answer.allowed and not denies
    answer.reasons.append({"code": code, "allows": not denies, "article": article, "detail": text,
                           "purpose": duty["purpose_key"], "event": None,
                           "duty": {"id": str(duty["id"]), "kind": duty["kind"], "due_at": duty["due_at"]}})
