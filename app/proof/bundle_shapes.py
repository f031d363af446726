"""The shape of an event line, and what a version 1 payload determines of it.

Part of app.proof.verify_bundle (see its docstring; docs/proof.md)."""
from __future__ import annotations

from datetime import datetime
from typing import Any


from app.consents import chain
from app.proof.bundle_format import (
    _ACTOR,
    _FIELDS,
    _MAX_SAFE,
    _NOTICE,
    _SIGNATURES,
    _STR,
    _TIME,
    _actor,
    _evidence,
    _fields,
    _notice,
)
from app.proof.bundle_result import _short

def _shape_ok(ev: Any) -> bool:
    """The printed event has exactly its members, of their types (then orjson's sorted form IS its
    RFC 8785 form: ASCII member names, safe integers, no floats; see app/core/hashing.py)."""
    try:
        values = _fields(ev)
    except (KeyError, TypeError):
        return False
    if len(ev) != len(_FIELDS) or tuple(map(type, values)) not in _SIGNATURES:
        return False
    try:
        return _parts_ok(ev)
    except (KeyError, TypeError):
        return False


def _parts_ok(ev: dict[str, Any]) -> bool:
    """The nested members, numbers and instants of an event whose members have their types."""
    actor, evidence, notice = ev["actor"], ev["evidence"], ev["notice"]
    return (0 < ev["chain_version"] < 100 and 0 < ev["seq"] <= _MAX_SAFE and 0 <= ev["version"] <= _MAX_SAFE
            and len(actor) == 2 and tuple(map(type, _actor(actor))) in _ACTOR
            and (evidence is None or (len(evidence) == 2 and set(map(type, _evidence(evidence))) == _STR))
            and (notice is None or (len(notice) == 5 and tuple(map(type, _notice(notice))) in _NOTICE))
            and _TIME(ev["recorded_at"]) is not None and _TIME(ev["occurred_at"]) is not None)


LEGACY_KEYS = frozenset(chain.LEGACY_FIELDS) | {"chain_version"}


def _legacy_instant(value: Any) -> str | None:
    """A v1 payload's instant (ISO 8601 with an offset) in the printed form, None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        return None
    return None if instant.tzinfo is None else chain.format_time(instant)


def _legacy_disagrees(ev: dict[str, Any], legacy: dict[str, Any]) -> list[str]:
    """The printed members a v1 payload also determines where the two differ (value or JSON type):
    only these of a version 1 event are covered by its hash. Not covered: subject_id (the payload
    has the internal subject id), purpose, collection_point, the notice's key, version, sha256 and
    superseded_at (it has their ids), evidence."""
    notice, actor = ev.get("notice"), ev.get("actor")
    notice_id = notice.get("id") if isinstance(notice, dict) else notice
    actor_type, actor_ref = (actor.get("type"), actor.get("ref")) if isinstance(actor, dict) else (actor, actor)
    pairs = [("id", ev.get("id"), legacy.get("id")), ("seq", ev.get("seq"), legacy.get("seq")),
             ("tenant", ev.get("tenant"), legacy.get("tenant_id")),
             ("request_id", ev.get("request_id"), legacy.get("request_id")),
             ("version", ev.get("version"), legacy.get("version")), ("action", ev.get("action"), legacy.get("action")),
             ("status", ev.get("status"), legacy.get("status")),
             ("previous_status", ev.get("previous_status"), legacy.get("previous_status")),
             ("notice.id", notice_id, legacy.get("notice_id")),
             ("disclosure_hash", ev.get("disclosure_hash"), legacy.get("disclosure_hash")),
             ("method", ev.get("method"), legacy.get("method")),
             ("actor.type", actor_type, legacy.get("actor_type")), ("actor.ref", actor_ref, legacy.get("actor_ref")),
             ("occurred_at", ev.get("occurred_at"), _legacy_instant(legacy.get("occurred_at"))),
             ("recorded_at", ev.get("recorded_at"), _legacy_instant(legacy.get("recorded_at"))),
             ("reason", ev.get("reason"), legacy.get("reason")), ("prev_hash", ev.get("prev_hash"), legacy.get("prev_hash")),
             ("chain_version", ev.get("chain_version"), legacy.get("chain_version"))]
    out = [name for name, printed, hashed in pairs if type(printed) is not type(hashed) or printed != hashed]
    if set(legacy) != LEGACY_KEYS:
        out.append("the payload's members (" + ", ".join(
            [f"{_short(k)} unexpected" for k in sorted(set(legacy) - LEGACY_KEYS)]
            + [f"{k} missing" for k in sorted(LEGACY_KEYS - set(legacy))]) + ")")
    return out
