"""The per-subject hash chain: each event's hash covers its content and the previous event's hash.

One chain per subject (not per tenant) so that writes of different subjects never wait on each
other; the subject row holds the head (last_seq, last_hash) and is the lock for appends.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Mapping

from app.core.hashing import canonical_json, sha256_hex

CHAIN_VERSION = 1
HASHED_FIELDS = (
    "id", "tenant_id", "subject_id", "seq", "purpose_id", "version", "action", "status", "previous_status",
    "collection_point_id", "notice_id", "disclosure_hash", "method", "actor_type", "actor_ref", "guardian",
    "ip", "user_agent", "occurred_at", "recorded_at", "request_id", "reason", "prev_hash",
)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, str) or value is None or isinstance(value, (int, bool, dict, list)):
        return value
    return str(value)  # UUIDs (stdlib or asyncpg's own type)


def event_hash(event: Mapping[str, Any]) -> str:
    guardian = event.get("guardian")
    if isinstance(guardian, str):
        guardian = json.loads(guardian)
    payload = {name: _plain(event.get(name)) for name in HASHED_FIELDS}
    payload["guardian"] = guardian
    payload["chain_version"] = CHAIN_VERSION
    return sha256_hex(canonical_json(payload))


def find_break(events: list[Mapping[str, Any]], head_hash: str | None, head_seq: int) -> dict[str, Any] | None:
    """Walk events in seq order; return the first place the chain does not hold, or None."""
    previous_hash: str | None = None
    for expected_seq, event in enumerate(events, start=1):
        if event["seq"] != expected_seq:
            return {"seq": expected_seq, "event_id": None, "reason": f"event seq {expected_seq} is missing"}
        if event["prev_hash"] != previous_hash:
            return {"seq": event["seq"], "event_id": event["id"],
                    "reason": "prev_hash does not match the previous event's hash"}
        if event_hash(event) != event["hash"]:
            return {"seq": event["seq"], "event_id": event["id"],
                    "reason": "content does not match its hash (the event was altered)"}
        previous_hash = event["hash"]
    if len(events) != head_seq or previous_hash != head_hash:
        return {"seq": len(events) + 1, "event_id": None,
                "reason": f"the subject's head records {head_seq} events ending in another hash "
                          f"than the {len(events)} stored (events were removed)"}
    return None
