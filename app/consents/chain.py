"""The per-subject hash chain: each event's hash covers its document and the previous event's hash.

One chain per subject (not per tenant) so that writes of different subjects never wait on each
other; the subject row holds the head (last_seq, last_hash) and is the lock for appends.

Chain version 2 (docs/proof.md): the hash is SHA-256 over the RFC 8785 form of the event's
*document*, which is exactly what the API and exports print for the event minus its `hash`, so
anyone can recompute it. Version 1 (before) hashed internal ids; `legacy_hash` keeps it checkable.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Mapping

import orjson

from app.core.hashing import canonical_document, sha256_hex

CHAIN_VERSION = 2


def format_time(value: datetime | None) -> str | None:
    """The one printed form of an instant: UTC, six fractional digits, `Z`."""
    if value is None:
        return None
    v = value if value.tzinfo is UTC else value.astimezone(UTC)
    if v.year < 1000 or type(v) is not datetime:  # strftime's own %Y, whatever the platform pads it to;
        # and a datetime subclass (orjson prints only datetime itself)
        return v.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # The same text as that strftime at a fraction of its cost (a verification prints two per event):
    # orjson prints an aware UTC instant as RFC 3339 with `Z`, leaving out a zero fraction.
    text = orjson.dumps(v, option=orjson.OPT_UTC_Z)
    if v.microsecond:
        return text[1:-1].decode()
    return text[1:-2].decode() + ".000000Z"


def _build(event: Mapping[str, Any], tenant: str, subject_ref: str, time: Callable[[datetime], Any]) -> dict[str, Any]:
    notice = None
    if event["notice_id"] is not None:
        superseded_at = event["notice_superseded_at"]
        notice = {"id": str(event["notice_id"]), "key": event["notice_key"], "version": event["notice_version"],
                  "sha256": event["notice_sha256"], "superseded_at": None if superseded_at is None else time(superseded_at)}
    evidence = None
    if event["evidence_id"] is not None:
        evidence = {"id": str(event["evidence_id"]), "commitment": event["evidence_commitment"]}
    return {
        "chain_version": event["chain_version"], "tenant": tenant, "subject_id": subject_ref,
        "id": str(event["id"]), "seq": event["seq"], "request_id": str(event["request_id"]),
        "purpose": event["purpose_key"], "version": event["version"], "action": event["action"],
        "status": event["status"], "previous_status": event["previous_status"],
        "collection_point": event["collection_point_key"], "notice": notice,
        "disclosure_hash": event["disclosure_hash"], "method": event["method"],
        "actor": {"type": event["actor_type"], "ref": event["actor_ref"]}, "evidence": evidence,
        "occurred_at": time(event["occurred_at"]), "recorded_at": time(event["recorded_at"]),
        "reason": event["reason"], "prev_hash": event["prev_hash"],
    }


def document(event: Mapping[str, Any], *, tenant: str, subject_ref: str) -> dict[str, Any]:
    """The event as printed, from its stored columns. `tenant` and `subject_ref` (the member id)
    come from the subject row, so the chain binds the member id: swap two ids and both break."""
    return _build(event, tenant, subject_ref, format_time)


def document_hash(doc: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the RFC 8785 form of a printed event without its `hash` member."""
    return sha256_hex(canonical_document({k: v for k, v in doc.items() if k != "hash"}))


# --- chain version 1 (events recorded before docs/proof.md) -----------------------------------------

LEGACY_FIELDS = (
    "id", "tenant_id", "subject_id", "seq", "purpose_id", "version", "action", "status", "previous_status",
    "collection_point_id", "notice_id", "disclosure_hash", "method", "actor_type", "actor_ref", "guardian",
    "ip", "user_agent", "occurred_at", "recorded_at", "request_id", "reason", "prev_hash",
)


def _legacy_plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, str) or value is None or isinstance(value, (int, bool, dict, list)):
        return value
    return str(value)  # UUIDs (stdlib or asyncpg's own type)


def legacy_payload(event: Mapping[str, Any]) -> dict[str, Any]:
    """What a version 1 hash covered: internal ids, raw evidence, isoformat times."""
    guardian = event.get("guardian")
    if isinstance(guardian, str):
        guardian = json.loads(guardian)
    payload = {name: _legacy_plain(event.get(name)) for name in LEGACY_FIELDS}
    payload["guardian"] = guardian
    payload["chain_version"] = 1
    return payload


def legacy_hash(payload: Mapping[str, Any]) -> str:
    return sha256_hex(json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


def stored_hash(event: Mapping[str, Any], *, tenant: str, subject_ref: str) -> str:
    """The hash a stored row should carry, by its chain version."""
    if event["chain_version"] == 1:
        return legacy_hash(legacy_payload(event))
    return sha256_hex(canonical_document(document(event, tenant=tenant, subject_ref=subject_ref)))  # no `hash` member


# --- a fast path for rows read straight from consent_events ------------------------------------------

# What each column a version 2 document prints must be for `row_hash`: the table's own types.
_ROW_TYPES = {
    "id": "uuid", "seq": "int8", "request_id": "uuid", "chain_version": "int2", "purpose_key": "text",
    "version": "int4", "action": "text", "status": "text", "previous_status": "text",
    "collection_point_key": "text", "notice_id": "uuid", "notice_key": "text", "notice_version": "text",
    "notice_sha256": "text", "notice_superseded_at": "timestamptz", "disclosure_hash": "text", "method": "text",
    "actor_type": "text", "actor_ref": "text", "evidence_id": "uuid", "evidence_commitment": "text",
    "occurred_at": "timestamptz", "recorded_at": "timestamptz", "reason": "text", "prev_hash": "text",
}
_ROW_JSON = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER | orjson.OPT_UTC_Z


def typed_rows(attributes: Any) -> bool:
    """Whether a statement's result columns (asyncpg `PreparedStatement.get_attributes()`) have the
    types `row_hash` relies on. A schema altered behind the service's back fails this and its rows
    take `stored_hash`, which checks every value."""
    types = {a.name: (a.type.schema, a.type.name) for a in attributes}
    return all(types.get(name) == ("pg_catalog", kind) for name, kind in _ROW_TYPES.items())


_last_printed: tuple[Any, str | None] = (None, None)  # (instant, its text): one entry, replaced whole


def _instant(value: datetime) -> Any:
    """An instant for `row_hash`'s orjson: the datetime itself where orjson prints format_time's
    text (an aware UTC datetime with a fraction, years 1000 on), else that text. The last UTC
    text is kept: the decisions of one request share one instant (its occurred_at and recorded_at),
    and two equal UTC datetimes are one instant, so one text."""
    global _last_printed
    if type(value) is not datetime or value.tzinfo is not UTC:  # (`==` ignores fold within one zone)
        return format_time(value)
    if value.microsecond and value.year >= 1000:
        return value
    last = _last_printed
    if last[0] == value:
        return last[1]
    text = format_time(value)
    _last_printed = (value, text)
    return text


def row_hash(event: Mapping[str, Any], *, tenant: str, subject_ref: str) -> str:
    """`stored_hash` of a row from a statement `typed_rows` accepted, `tenant` and `subject_ref`
    being str. Its document is then flat by construction (strings, nulls, integers, objects of
    strings and nulls, under ASCII keys), where orjson's sorted output is the RFC 8785 form
    (app/core/hashing.py), so the per-value walk of `canonical_document` is skipped, and orjson
    prints the instants itself; an integer past 2^53 falls back to it."""
    if event["chain_version"] == 1:
        return stored_hash(event, tenant=tenant, subject_ref=subject_ref)
    try:
        return sha256_hex(orjson.dumps(_build(event, tenant, subject_ref, _instant), option=_ROW_JSON))
    except orjson.JSONEncodeError:
        return sha256_hex(canonical_document(document(event, tenant=tenant, subject_ref=subject_ref)))
