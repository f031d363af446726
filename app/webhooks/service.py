"""Webhook endpoints, their secrets, and the delivery log: every query filtered by the caller's tenant."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.auth.deps import Principal
from app.core import actor
from app.core.errors import Conflict, InvalidRequest, NotFound
from app.core.pagination import decode_cursor, encode_cursor
from app.core.settings import Settings
from app.webhooks import outbox, signing, ssrf
from app.webhooks.outbox import PAUSE, RESUME, SUCCESSORS
from app.webhooks.schemas import EndpointCreate, EndpointUpdate, RecoverIn

ENDPOINT_COLUMNS = """
e.id, e.url, e.description, pr.key AS processor, e.event_types, e.kinds, e.purposes, e.channels, e.categories,
e.enabled,
e.disabled_reason, e.disabled_at, e.failing_since,
CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret_expires_at END AS secret_rotation_ends_at,
e.created_at, e.updated_at
"""
ENDPOINT_FROM = "webhook_endpoints e LEFT JOIN processors pr ON pr.id = e.processor_id"


def _not_found(endpoint_id: uuid.UUID) -> NotFound:
    return NotFound(f"no webhook endpoint {endpoint_id}")


async def check_url(url: str | None, settings: Settings, field: str = "body.url") -> None:
    """The SSRF guard at registration. Callers run it before taking a database connection: a slow
    DNS answer must not hold one of the pool's connections inside a transaction."""
    if url is None:
        return
    try:
        async with asyncio.timeout(settings.webhook_connect_timeout_seconds):
            await ssrf.resolve(url, settings.webhook_allowed_hosts)
    except TimeoutError as exc:
        raise InvalidRequest("the endpoint URL's host did not resolve in time",
                             errors=[{"field": field, "reason": "DNS lookup timed out"}]) from exc
    except ssrf.UnsafeURL as exc:
        raise InvalidRequest(f"the endpoint URL is refused: {exc.reason}",
                             errors=[{"field": field, "reason": exc.reason}]) from exc


async def _processor_id(conn: asyncpg.Connection, tenant: str, key: str | None, field: str) -> uuid.UUID | None:
    if key is None:
        return None
    found = await conn.fetchval("SELECT id FROM processors WHERE tenant_id = $1 AND key = $2", tenant, key)
    if found is None:
        raise NotFound(f"no processor with key {key!r}", errors=[{"field": field, "reason": "unknown processor"}])
    return found


async def get_endpoint(conn: asyncpg.Connection | asyncpg.Pool, principal: Principal,
                       endpoint_id: uuid.UUID) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"SELECT {ENDPOINT_COLUMNS} FROM {ENDPOINT_FROM} WHERE e.id = $1 AND e.tenant_id = $2 AND e.deleted_at IS NULL",
        endpoint_id, principal.tenant,
    )
    if row is None:
        raise _not_found(endpoint_id)
    return dict(row)


async def list_endpoints(pool: asyncpg.Pool, principal: Principal) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        f"SELECT {ENDPOINT_COLUMNS} FROM {ENDPOINT_FROM} WHERE e.tenant_id = $1 AND e.deleted_at IS NULL"
        " ORDER BY e.created_at, e.id", principal.tenant,
    )
    return [dict(r) for r in rows]


async def create_endpoint(conn: asyncpg.Connection, principal: Principal, body: EndpointCreate) -> dict[str, Any]:
    """`body.url` must have passed `check_url`."""
    await actor.declare(conn, principal.sub)
    processor_id = await _processor_id(conn, principal.tenant, body.processor, "body.processor")
    secret = signing.new_secret()
    endpoint_id = await conn.fetchval(
        """INSERT INTO webhook_endpoints (tenant_id, processor_id, url, description, event_types, kinds, purposes,
                                          channels, categories, enabled, secret)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id""",
        principal.tenant, processor_id, body.url, body.description, body.event_types, body.kinds, body.purposes,
        body.channels, body.categories, body.enabled, secret,
    )
    return {**await get_endpoint(conn, principal, endpoint_id), "secret": secret}


async def update_endpoint(conn: asyncpg.Connection, principal: Principal, endpoint_id: uuid.UUID,
                          body: EndpointUpdate) -> dict[str, Any]:
    """`body.url`, if given, must have passed `check_url`."""
    await actor.declare(conn, principal.sub)
    current = await get_endpoint(conn, principal, endpoint_id)
    changes = body.changes()
    if "processor" in changes:
        changes["processor_id"] = await _processor_id(conn, principal.tenant, changes.pop("processor"),
                                                      "body.processor")
    enabling = changes.get("enabled") is True and not current["enabled"]
    disabling = changes.get("enabled") is False and current["enabled"]
    if disabling:
        changes.update(disabled_reason="disabled by an operator", disabled_at=datetime.now(UTC))
    if enabling:  # a fresh start: no failure history carried over
        changes.update(disabled_reason=None, disabled_at=None, failing_since=None)
    if changes:
        if disabling:  # consents writing to it now commit first (outbox.ENQUEUE)
            await conn.execute(outbox.ENDPOINT_OFF, endpoint_id, principal.tenant)
        assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(changes, start=3))
        await conn.execute(
            f"UPDATE webhook_endpoints SET {assignments}, updated_at = now() WHERE id = $1 AND tenant_id = $2",
            endpoint_id, principal.tenant, *changes.values(),
        )
        if enabling:  # what waited while it was disabled goes out now, in order
            await conn.execute(RESUME, endpoint_id)
            await outbox.notify(conn)
        elif disabling:
            await conn.execute(PAUSE, endpoint_id)
    return await get_endpoint(conn, principal, endpoint_id)


async def delete_endpoint(conn: asyncpg.Connection, principal: Principal, endpoint_id: uuid.UUID) -> None:
    """Soft delete: the delivery log stays for the auditors; nothing more is sent. The endpoint row
    is locked before its deliveries, the one lock order of the webhook tables (docs/design.md)."""
    await actor.declare(conn, principal.sub)
    await conn.execute(outbox.ENDPOINT_OFF, endpoint_id, principal.tenant)
    deleted = await conn.fetchval(
        """UPDATE webhook_endpoints SET deleted_at = now(), enabled = false, updated_at = now(),
                  secret = '', previous_secret = NULL, previous_secret_expires_at = NULL
           WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL RETURNING id""",
        endpoint_id, principal.tenant,
    )
    if deleted is None:
        raise _not_found(endpoint_id)
    await conn.execute(
        """UPDATE webhook_deliveries SET status = 'failed', failed_at = now(), last_error = 'endpoint deleted'
           WHERE endpoint_id = $1 AND status = 'pending'""", endpoint_id)


async def rotate_secret(conn: asyncpg.Connection, principal: Principal, endpoint_id: uuid.UUID,
                        grace_seconds: int) -> dict[str, Any]:
    await actor.declare(conn, principal.sub)
    secret = signing.new_secret()
    updated = await conn.fetchval(
        """UPDATE webhook_endpoints
           SET previous_secret = secret, secret = $3,
               previous_secret_expires_at = now() + make_interval(secs => $4), updated_at = now()
           WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL RETURNING id""",
        endpoint_id, principal.tenant, secret, float(grace_seconds),
    )
    if updated is None:
        raise _not_found(endpoint_id)
    return {**await get_endpoint(conn, principal, endpoint_id), "secret": secret}


async def send_test(conn: asyncpg.Connection, principal: Principal, endpoint_id: uuid.UUID) -> dict[str, Any]:
    await get_endpoint(conn, principal, endpoint_id)
    message_id, delivery_id = await outbox.enqueue_test(conn, tenant=principal.tenant, endpoint_id=endpoint_id)
    return {"message_id": message_id, "delivery_id": delivery_id}


# --- the delivery log --------------------------------------------------------------------------------

DELIVERY_COLUMNS = """
d.id, d.message_id, d.endpoint_id, m.type, m.subject_ref AS subject_id, d.status, d.attempts,
CASE WHEN d.status = 'pending' AND d.next_attempt_at < 'infinity' THEN d.next_attempt_at END
    AS next_attempt_at, d.last_attempt_at,
d.last_status_code, d.last_error, d.delivered_at, d.failed_at, d.created_at
"""


def _created_id(parts: list[str]) -> tuple[datetime, uuid.UUID]:
    created, ident = parts
    return datetime.fromisoformat(created), uuid.UUID(ident)


async def list_deliveries(
    pool: asyncpg.Pool, principal: Principal, *, endpoint_id: uuid.UUID, status: str | None, type_: str | None,
    subject_id: str | None, since: datetime | None, until: datetime | None, cursor: str | None, limit: int,
) -> dict[str, Any]:
    """Newest first, keyset-paginated on (created_at, id)."""
    await get_endpoint(pool, principal, endpoint_id)
    before_at, before_id = decode_cursor(cursor, _created_id) if cursor else (None, None)
    rows = await pool.fetch(
        f"""SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN webhook_messages m ON m.id = d.message_id
            WHERE d.endpoint_id = $1 AND d.tenant_id = $2
              AND ($3::text IS NULL OR d.status = $3) AND ($4::text IS NULL OR m.type = $4)
              AND ($5::text IS NULL OR m.subject_ref = $5)
              AND ($6::timestamptz IS NULL OR d.created_at >= $6) AND ($7::timestamptz IS NULL OR d.created_at < $7)
              AND ($8::timestamptz IS NULL OR (d.created_at, d.id) < ($8, $9::uuid))
            ORDER BY d.created_at DESC, d.id DESC LIMIT $10""",
        endpoint_id, principal.tenant, status, type_, subject_id, since, until, before_at, before_id, limit + 1,
    )
    items = [dict(r) for r in rows[:limit]]
    return {"items": items, "next_cursor": encode_cursor(items[-1]["created_at"].isoformat(), items[-1]["id"])
            if len(rows) > limit else None}


async def get_delivery(pool: asyncpg.Pool, principal: Principal, delivery_id: uuid.UUID) -> dict[str, Any]:
    row = await pool.fetchrow(
        f"""SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN webhook_messages m ON m.id = d.message_id
            WHERE d.id = $1 AND d.tenant_id = $2""", delivery_id, principal.tenant,
    )
    if row is None:
        raise NotFound(f"no webhook delivery {delivery_id}")
    attempts = await pool.fetch(
        """SELECT attempted_at, status_code, latency_ms, response_body, error, worker FROM webhook_attempts
           WHERE delivery_id = $1 ORDER BY attempted_at""", delivery_id,
    )
    return {**dict(row), "attempts_log": [dict(a) for a in attempts]}


async def get_message(pool: asyncpg.Pool, principal: Principal, message_id: uuid.UUID) -> dict[str, Any]:
    message = await pool.fetchrow(
        """SELECT id, type, subject_ref AS subject_id, event_id, body, created_at FROM webhook_messages
           WHERE id = $1 AND tenant_id = $2""", message_id, principal.tenant,
    )
    if message is None:
        raise NotFound(f"no webhook message {message_id}")
    deliveries = await pool.fetch(
        f"""SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN webhook_messages m ON m.id = d.message_id
            WHERE d.message_id = $1 AND d.tenant_id = $2 ORDER BY d.created_at, d.id""", message_id, principal.tenant,
    )
    result = dict(message)
    result["payload"] = json.loads(result.pop("body"))
    return {**result, "deliveries": [dict(d) for d in deliveries]}


# A replay starts a fresh round of the retry schedule; the attempt log keeps every earlier try.
REQUEUE = """
UPDATE webhook_deliveries SET status = 'pending', attempts = 0, lease_token = NULL, failed_at = NULL,
    next_attempt_at = CASE WHEN (SELECT enabled FROM webhook_endpoints WHERE id = endpoint_id) THEN now()
                           ELSE 'infinity' END
"""


async def retry_delivery(conn: asyncpg.Connection, principal: Principal, delivery_id: uuid.UUID) -> dict[str, Any]:
    """Send again now, whatever the state: a dead letter, a delivered message to replay, or a waiting retry."""
    # The endpoint first (the one lock order, docs/design.md): a disable or delete running now
    # finishes before this reads whether the endpoint is there and on.
    locked = await conn.fetchval(
        "SELECT true FROM webhook_endpoints WHERE tenant_id = $2 AND id = "
        "(SELECT endpoint_id FROM webhook_deliveries WHERE id = $1 AND tenant_id = $2) FOR NO KEY UPDATE",
        delivery_id, principal.tenant)  # outbox.LOCK_ENDPOINT, found through the delivery
    if locked is None:
        raise NotFound(f"no webhook delivery {delivery_id}")
    state = await conn.fetchrow(
        """SELECT d.endpoint_id, d.subject_id, d.seq, e.deleted_at IS NOT NULL AS endpoint_deleted,
                  d.lease_token IS NOT NULL AND d.next_attempt_at > now() AS in_flight
           FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
           WHERE d.id = $1 AND d.tenant_id = $2 FOR UPDATE OF d""", delivery_id, principal.tenant)
    if state["endpoint_deleted"]:  # it would wait forever: nothing is sent to a deleted endpoint
        raise Conflict("this delivery's endpoint was deleted; register the receiver again to send it")
    if state["in_flight"]:
        raise Conflict("a worker is sending this delivery right now; retry after it finishes")
    await conn.execute(REQUEUE + " WHERE id = $1", delivery_id)
    if state["subject_id"] is not None:  # later changes parked behind this delivery's retry are due again too
        await conn.execute(SUCCESSORS, state["endpoint_id"], state["subject_id"], state["seq"], None)
    await outbox.notify(conn)
    return await get_delivery(conn, principal, delivery_id)


async def recover(conn: asyncpg.Connection, principal: Principal, endpoint_id: uuid.UUID,
                  body: RecoverIn) -> dict[str, Any]:
    await conn.execute(outbox.LOCK_ENDPOINT, endpoint_id, principal.tenant)  # before its deliveries
    endpoint = await get_endpoint(conn, principal, endpoint_id)
    if body.until is not None and body.until <= body.since:
        raise InvalidRequest("until must be later than since",
                             errors=[{"field": "body.until", "reason": "must be later than since"}])
    count = await conn.fetchval(
        f"""WITH requeued AS ({REQUEUE}
                WHERE endpoint_id = $1 AND tenant_id = $2 AND status = 'failed' AND created_at >= $3
                  AND ($4::timestamptz IS NULL OR created_at < $4) RETURNING 1)
            SELECT count(*) FROM requeued""",
        endpoint_id, principal.tenant, body.since, body.until,
    )
    if count:
        await outbox.notify(conn)
    return {"endpoint_id": endpoint_id, "requeued": count, "endpoint_enabled": endpoint["enabled"]}


def grace(settings: Settings, requested: int | None) -> int:
    return settings.webhook_secret_grace_seconds if requested is None else requested
