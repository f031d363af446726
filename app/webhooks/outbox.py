"""The transactional outbox: webhook messages written by the consent's own transaction (invariant 8).

Called with the connection that appended the events, so a committed consent always has its
messages and a rolled-back one never does. Workers wake on the NOTIFY the deliveries' insert
trigger sends at commit (see the 0002 migration).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from app.core.responses import dumps

TEST_TYPE = "webhook.test"
CHECKPOINT_TYPE = "ledger.checkpoint"
CHANNEL = "webhook_deliveries"  # LISTEN/NOTIFY channel
# What a message says of its purpose: (key, kind, channel, category, legal basis).
Purpose = tuple[str, str, "str | None", "str | None", str]

# A disabled endpoint's deliveries wait, out of the claim's way, until it is enabled again.
PAUSE = """
UPDATE webhook_deliveries SET next_attempt_at = 'infinity'
WHERE endpoint_id = $1 AND status = 'pending' AND lease_token IS NULL AND next_attempt_at < 'infinity'
"""
RESUME = """
UPDATE webhook_deliveries SET next_attempt_at = now()
WHERE endpoint_id = $1 AND status = 'pending' AND next_attempt_at = 'infinity'
"""

# Later changes of one (endpoint, subject) are due with their predecessor's next attempt ($4), or
# now when $4 is null (it succeeded, became a dead letter, or is retried by hand), instead of
# sitting due-but-blocked: the claim would re-read every one of them on every round while a
# receiver is down (measured: 180 ms per claim with 75,000 of them, for every endpoint's claims).
SUCCESSORS = """
UPDATE webhook_deliveries SET next_attempt_at = COALESCE($4, now())
WHERE endpoint_id = $1 AND subject_id = $2 AND seq > $3 AND status = 'pending' AND lease_token IS NULL
  AND next_attempt_at < 'infinity' AND next_attempt_at IS DISTINCT FROM COALESCE($4, now())
"""


async def notify(conn: asyncpg.Connection) -> None:
    """Wake the workers at commit (inserted deliveries do this through their trigger)."""
    await conn.execute(f"SELECT pg_notify('{CHANNEL}', '')")


def body(type_: str, timestamp: datetime, data: dict[str, Any]) -> str:
    return dumps({"type": type_, "timestamp": timestamp, "data": data})


def is_change(event: dict[str, Any]) -> bool:
    """A status change, or an action receivers must hear of even when the status stays the same. An
    acknowledgement of a purpose processed without consent is no consent change: no message."""
    if event["action"] == "acknowledged":
        return False
    return event["status"] != event["previous_status"] or event["action"] in ("reconfirmed", "expired", "revoked")


# Hot path (every consent write): one statement that matches the changed events against the
# tenant's endpoints and writes a message per event that has a subscriber, and a delivery per
# (message, endpoint). Empty endpoint filters mean "all". A channel filter also matches the
# marketing purposes that bind every channel: the channel-less umbrella consent and night-time
# sending (Network Act Art. 50(3)), so the SMS sender hears when either is withdrawn. A disabled
# endpoint's deliveries are written paused (due at 'infinity') and resume when it is enabled.
# The matched endpoint rows are key-share-locked: a disable or delete in progress (it locks the
# endpoint row FOR UPDATE, the one mode this conflicts with, then pauses or fails its deliveries)
# either waits for this consent to commit and then sees its deliveries, or has committed first
# and this statement reads its result; without the lock a delivery could be written due for an
# endpoint switched off in between. KEY SHARE, not SHARE: the worker's lock on an endpoint for
# every failed attempt (FOR NO KEY UPDATE) and its streak updates never make a consent wait.
ENDPOINT_OFF = "SELECT 1 FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2 FOR UPDATE"
# Anything else that changes an endpoint's deliveries (the worker recording a failure, an operator's
# retry or recover) locks the endpoint first with this: it waits for a switch-off, never for consents.
LOCK_ENDPOINT = "SELECT 1 FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2 FOR NO KEY UPDATE"
# Does endpoint `e` hear of a change of a purpose (`ev` has its type, kind, category, purpose key
# and channel)? Empty endpoint filters mean "all"; a channel filter also matches the marketing
# purposes that bind every channel (see ENQUEUE_CTES). Shared with app/duties/consequences.py:
# the processors that hear of a withdrawal are the ones that must confirm they stopped.
MATCH = """(cardinality(e.kinds) = 0 OR {ev}.kind = ANY(e.kinds))
     AND (cardinality(e.categories) = 0 OR {ev}.category = ANY(e.categories))
     AND (cardinality(e.purposes) = 0 OR {ev}.purpose = ANY(e.purposes))
     AND (cardinality(e.channels) = 0 OR {ev}.channel = ANY(e.channels)
          OR ({ev}.kind = 'marketing' AND ({ev}.channel IS NULL OR {ev}.channel = 'night')))
     AND (cardinality(e.event_types) = 0 OR {ev}.type = ANY(e.event_types))"""


def enqueue_ctes(*, messages: str, tenant: str, subject_ref: str, subject_id: str) -> str:
    """The enqueue as common table expressions, for a statement of its own (ENQUEUE) or inside the
    ledger's append (app/consents/ledger.py: one round trip for events and their messages). The
    arguments are the placeholders of the messages (a JSON array of `rows()`), the tenant, the
    member id and the subject's uuid."""
    return ENQUEUE_CTES.format(messages=messages, tenant=tenant, subject_ref=subject_ref, subject_id=subject_id,
                               match=MATCH.format(ev="ev"))


ENQUEUE_CTES = """
outbox_ev AS (
    SELECT * FROM json_to_recordset({messages}::text::json)
        AS u(event_id uuid, seq bigint, type text, purpose text, kind text, channel text, category text, body text)
), outbox_matched AS (
    SELECT ev.event_id, ev.seq, e.id AS endpoint_id, e.enabled
    FROM outbox_ev ev JOIN webhook_endpoints e ON e.tenant_id = {tenant} AND e.deleted_at IS NULL AND {match}
    -- an endpoint being disabled or deleted right now is read as it ends up (see docs/design.md)
    FOR KEY SHARE OF e
), outbox_messages AS (
    INSERT INTO webhook_messages (id, tenant_id, type, subject_ref, event_id, body, created_at)
    SELECT gen_random_uuid(), {tenant}, ev.type, {subject_ref}, ev.event_id, ev.body, clock_timestamp()
    FROM outbox_ev ev WHERE ev.event_id IN (SELECT event_id FROM outbox_matched)
    RETURNING id, event_id
), outbox_deliveries AS (
    INSERT INTO webhook_deliveries (tenant_id, message_id, endpoint_id, subject_id, seq, next_attempt_at)
    SELECT {tenant}, m.id, matched.endpoint_id, {subject_id}, matched.seq,
           CASE WHEN NOT matched.enabled THEN 'infinity'::timestamptz
                -- behind a predecessor waiting for a retry: due with it, not before (see SUCCESSORS)
                ELSE GREATEST(now(), (SELECT max(p.next_attempt_at) FROM webhook_deliveries p
                                      WHERE p.endpoint_id = matched.endpoint_id AND p.subject_id = {subject_id}
                                        AND p.status = 'pending' AND p.lease_token IS NULL)) END
    FROM outbox_matched matched JOIN outbox_messages m USING (event_id)
    RETURNING 1
)"""
def enqueue_unordered(match: str) -> str:
    """Messages outside any subject's order (duties, reconsent requests: app/duties/), one JSON
    array parameter of {id, tenant, subject_ref, type, purpose, processor, kind, channel, category,
    body}; `match` is the SQL condition on the message `m` and the endpoint `e` (the tenant and
    deletion are checked here). A message goes out only if some endpoint matches, with a delivery per
    endpoint, key-share-locked as in ENQUEUE_CTES. The deliveries come from `matched` alone: a join
    back to `m` (no statistics, no index) was a nested loop of batch x batch rows (measured: 0.3 s
    per 2,000 messages)."""
    return f"""
WITH m AS (
    SELECT * FROM json_to_recordset($1::text::json) AS u(id uuid, tenant text, subject_ref text, type text,
        purpose text, processor text, kind text, channel text, category text, body text)
), matched AS (
    SELECT m.id, m.tenant, e.id AS endpoint_id, e.enabled FROM m JOIN webhook_endpoints e
      ON e.tenant_id = m.tenant AND e.deleted_at IS NULL AND {match}
    FOR KEY SHARE OF e
), messages AS (
    INSERT INTO webhook_messages (id, tenant_id, type, subject_ref, body, created_at)
    SELECT m.id, m.tenant, m.type, m.subject_ref, m.body, clock_timestamp() FROM m
    WHERE m.id IN (SELECT id FROM matched)
    RETURNING id
)
INSERT INTO webhook_deliveries (tenant_id, message_id, endpoint_id, next_attempt_at)
SELECT matched.tenant, matched.id, matched.endpoint_id,
       CASE WHEN matched.enabled THEN now() ELSE 'infinity'::timestamptz END
FROM matched WHERE matched.id IN (SELECT id FROM messages)
"""


ENQUEUE = f"WITH {enqueue_ctes(messages='$1', tenant='$2', subject_ref='$3', subject_id='$4')} SELECT 1"


def rows(*, tenant: str, subject_ref: str, events: list[dict[str, Any]],
         purposes: dict[str, Purpose], duties: dict[str, list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """The messages for `events` as printed (app/consents/chain.py): one per change a receiver
    must hear of (sent as JSON text: `dumps()`); `purposes` maps purpose key -> (key, kind,
    channel, category, legal basis) for every purpose in them; `duties` the duties each event
    opened (app/duties/consequences.py): a processor finds there the suppression it must confirm."""
    messages = []
    for event in events:
        if not is_change(event):
            continue
        key, kind, channel, category, legal_basis = purposes[event["purpose"]]
        type_ = f"consent.{event['action']}"
        data = {
            "tenant": tenant, "subject_id": subject_ref, "purpose": key, "channel": channel, "category": category,
            "legal_basis": legal_basis,
            "status": event["status"], "previous_status": event["previous_status"], "version": event["version"],
            "event_id": event["id"], "occurred_at": event["occurred_at"],
        }
        if duties and event["id"] in duties:
            data["duties"] = duties[event["id"]]
        messages.append({"event_id": event["id"], "seq": event["seq"], "type": type_, "purpose": key, "kind": kind,
                         "channel": channel, "category": category, "body": body(type_, event["recorded_at"], data)})
    return messages


async def enqueue(
    conn: asyncpg.Connection, *, tenant: str, subject_ref: str, subject_id: uuid.UUID, events: list[dict[str, Any]],
    purposes: dict[str, Purpose],
) -> None:
    """A statement of its own; a consent write enqueues inside its append instead (ledger.write)."""
    messages = rows(tenant=tenant, subject_ref=subject_ref, events=events, purposes=purposes)
    if messages:
        await conn.execute(ENQUEUE, dumps(messages), tenant, subject_ref, subject_id)


async def enqueue_test(conn: asyncpg.Connection, *, tenant: str, endpoint_id: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID]:
    """A `webhook.test` message to one endpoint; returns (message id, delivery id)."""
    now = await conn.fetchval("SELECT clock_timestamp()")
    message_id = await conn.fetchval(
        "INSERT INTO webhook_messages (tenant_id, type, body, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        tenant, TEST_TYPE,
        body(TEST_TYPE, now, {"tenant": tenant, "endpoint_id": endpoint_id,
                              "note": "test event sent on request; it reflects no consent change"}),
        now,
    )
    delivery_id = await conn.fetchval(
        "INSERT INTO webhook_deliveries (tenant_id, message_id, endpoint_id) VALUES ($1, $2, $3) RETURNING id",
        tenant, message_id, endpoint_id,
    )
    return message_id, delivery_id


# A signed checkpoint (docs/proof.md) goes to every enabled endpoint of the tenant that lists
# `ledger.checkpoint` in its event_types: explicitly, since an empty list means every *consent*
# event type. One message, no subject (subject_ref, event_id and the deliveries' subject_id and seq
# stay null: a checkpoint waits behind no one's consent changes). The endpoint rows are
# key-share-locked as in ENQUEUE, so one being switched off right now is read as it ends up.
ENQUEUE_CHECKPOINT = """
WITH matched AS (
    SELECT e.id FROM webhook_endpoints e
    WHERE e.tenant_id = $1 AND e.deleted_at IS NULL AND e.enabled AND $2 = ANY(e.event_types)
    FOR KEY SHARE OF e
), message AS (
    INSERT INTO webhook_messages (tenant_id, type, body, created_at)
    SELECT $1, $2, $3, clock_timestamp() WHERE EXISTS (SELECT 1 FROM matched)
    RETURNING id
)
INSERT INTO webhook_deliveries (tenant_id, message_id, endpoint_id)
SELECT $1, message.id, matched.id FROM message, matched
"""


async def enqueue_checkpoint(conn: asyncpg.Connection, *, tenant: str, checkpoint: dict[str, Any]) -> None:
    """A `ledger.checkpoint` message in the checkpoint's own transaction; `checkpoint` is the dict
    app/proof/log.py returns (tenant, tree_size, root_hash, issued_at, key_id, jws)."""
    data = {name: checkpoint[name] for name in ("tenant", "tree_size", "root_hash", "issued_at", "key_id", "jws")}
    await conn.execute(ENQUEUE_CHECKPOINT, tenant, CHECKPOINT_TYPE, body(CHECKPOINT_TYPE, checkpoint["issued_at"], data))
