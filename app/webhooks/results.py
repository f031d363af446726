"""Recording what a send did: the attempt log, the delivery's next state, the endpoint's health.

Lock order (docs/design.md): a transaction that locks an endpoint and some of its deliveries
locks the endpoint first, as disabling and deleting an endpoint do. The failure path therefore
starts by locking its endpoint; the success batch never holds an endpoint and a delivery at once
(it clears failure streaks in a statement of its own).

A result is written only while the claim's lease token still matches, so a worker that lost its
lease (or a delivery whose endpoint was deleted meanwhile) cannot overwrite a newer outcome; its
attempt is logged all the same.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

import asyncpg

from app.core.settings import Settings
from app.webhooks.outbox import ENDPOINT_OFF, LOCK_ENDPOINT, PAUSE, SUCCESSORS
from app.webhooks.sender import Result

# Attempt rows are written at most once per (delivery, attempted_at), so a write repeated after a
# commit whose answer was lost with the database logs nothing twice.
LOG_ATTEMPT = """
INSERT INTO webhook_attempts
    (tenant_id, delivery_id, attempted_at, status_code, latency_ms, response_body, error, worker)
SELECT $1, $2, $3, $4, $5, $6, $7, $8
WHERE NOT EXISTS (SELECT 1 FROM webhook_attempts WHERE delivery_id = $2 AND attempted_at = $3)
"""

# Successes are recorded in batches (one statement for every send that finished in the last few
# milliseconds): on the hot path this halves the database round trips per delivery. A later
# message of the same (endpoint, subject) stays unclaimable until its predecessor's batch commits.
# Returns the endpoints whose failure streak this batch ends (read, not locked: see above).
SUCCEEDED = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::timestamptz[], $4::int[], $5::float8[], $6::text[], $7::uuid[])
        AS u(tenant_id, delivery_id, attempted_at, status_code, latency_ms, response_body, token)
), attempt AS (
    INSERT INTO webhook_attempts
        (tenant_id, delivery_id, attempted_at, status_code, latency_ms, response_body, worker)
    SELECT tenant_id, delivery_id, attempted_at, status_code, latency_ms, response_body, $8 FROM input i
    WHERE NOT EXISTS (SELECT 1 FROM webhook_attempts a WHERE a.delivery_id = i.delivery_id
                                                         AND a.attempted_at = i.attempted_at)
    RETURNING 1
), delivered AS (
    UPDATE webhook_deliveries d SET status = 'delivered', attempts = d.attempts + 1, delivered_at = now(),
        last_attempt_at = i.attempted_at, last_status_code = i.status_code, last_error = NULL, lease_token = NULL
    FROM input i WHERE d.id = i.delivery_id AND d.lease_token = i.token
      AND d.status = 'pending'  -- a delivery failed by its endpoint's deletion stays failed (the attempt is logged)
    RETURNING d.endpoint_id, i.attempted_at
)
SELECT (SELECT count(*) FROM delivered) AS delivered,
       array_agg(h.endpoint_id) AS endpoints, array_agg(h.at) AS ats
FROM (SELECT endpoint_id, max(attempted_at) AS at FROM delivered GROUP BY endpoint_id) h
JOIN webhook_endpoints e ON e.id = h.endpoint_id AND e.failing_since IS NOT NULL AND e.failing_since <= h.at
"""

HEALTHY = """
UPDATE webhook_endpoints e SET failing_since = NULL
FROM unnest($1::uuid[], $2::timestamptz[]) AS h(endpoint_id, at)
WHERE e.id = h.endpoint_id AND e.failing_since <= h.at
"""


# `status = 'pending'`: a delivery that ended meanwhile (its endpoint was deleted) stays ended.
FAILED = """
WITH attempt AS (""" + LOG_ATTEMPT + """ RETURNING 1)
UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = $3, last_status_code = $4,
    last_error = COALESCE($7, 'HTTP ' || $4), lease_token = NULL,
    status = CASE WHEN $10::float8 IS NULL THEN 'failed' ELSE 'pending' END,
    failed_at = CASE WHEN $10::float8 IS NULL THEN now() END,
    next_attempt_at = CASE WHEN $10::float8 IS NULL THEN next_attempt_at
                           ELSE now() + make_interval(secs => $10::float8) END
WHERE id = $2 AND lease_token = $9 AND status = 'pending'
RETURNING status, next_attempt_at
"""

# The endpoint row is already locked (LOCK_ENDPOINT), so this reads its current failure streak.
ENDPOINT_FAILING = """
UPDATE webhook_endpoints e SET
    failing_since = x.since,
    enabled = e.enabled AND NOT x.disable,
    disabled_at = CASE WHEN e.enabled AND x.disable THEN now() ELSE e.disabled_at END,
    updated_at = CASE WHEN e.enabled AND x.disable THEN now() ELSE e.updated_at END,
    disabled_reason = CASE
        WHEN NOT (e.enabled AND x.disable) THEN e.disabled_reason
        WHEN $3 THEN 'the receiver answered 410 Gone'
        ELSE 'every delivery failed since '
             || to_char(x.since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') END
FROM (
    SELECT id, enabled AS was_enabled, COALESCE(failing_since, $2) AS since,
           $3 OR COALESCE(failing_since, $2) < now() - make_interval(secs => $4) AS disable
    FROM webhook_endpoints WHERE id = $1
) x
WHERE e.id = x.id
RETURNING e.enabled, x.was_enabled AND NOT e.enabled AS disabled_now
"""


def next_delay(settings: Settings, attempts_done: int, retry_after: float | None) -> float | None:
    """Seconds until the next attempt after `attempts_done` attempts, or None when the last one failed."""
    schedule = settings.webhook_retry_schedule
    if attempts_done >= len(schedule):
        return None
    delay = schedule[attempts_done] * (1 + random.uniform(-1, 1) * settings.webhook_retry_jitter)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.webhook_max_retry_after_seconds))
    return max(0.0, delay)


@dataclass
class Failure:
    """What a recorded failure led to, for the metrics."""
    dead_letter: bool = False
    disabled: str | None = None  # "gone" or "failing" when this failure disabled the endpoint


async def record_failure(conn: asyncpg.Connection, settings: Settings, worker: str, delivery: asyncpg.Record,
                         token: uuid.UUID, result: Result) -> Failure | None:
    """Log the attempt and schedule the retry (or the dead letter); None when the lease was lost."""
    attempt = (delivery["tenant_id"], delivery["id"], result.attempted_at, result.status_code,
               result.latency_ms, result.response_body, result.error, worker)
    gone = result.status_code == 410
    delay = None if gone else next_delay(settings, delivery["attempts"] + 1, result.retry_after)
    async with conn.transaction():
        await conn.execute(LOCK_ENDPOINT, delivery["endpoint_id"], delivery["tenant_id"])
        updated = await conn.fetchrow(FAILED, *attempt, token, delay)
        if updated is None:
            return None  # the lease was lost (a manual retry, a deleted endpoint): the newer state stands
        if delivery["subject_id"] is not None:  # later changes wait for the retry, or go after a dead letter
            retry_at = updated["next_attempt_at"] if updated["status"] == "pending" else None
            await conn.execute(SUCCESSORS, delivery["endpoint_id"], delivery["subject_id"], delivery["seq"], retry_at)
        health = await conn.fetchrow(ENDPOINT_FAILING, delivery["endpoint_id"], result.attempted_at, gone,
                                     settings.webhook_disable_after_seconds)
        if health["disabled_now"]:  # consents writing to it right now finish first, then are paused too
            await conn.execute(ENDPOINT_OFF, delivery["endpoint_id"], delivery["tenant_id"])
        if not health["enabled"]:
            await conn.execute(PAUSE, delivery["endpoint_id"])
    return Failure(dead_letter=updated["status"] == "failed",
                   disabled=("gone" if gone else "failing") if health["disabled_now"] else None)


async def record_successes(conn: asyncpg.Connection, worker: str,
                           batch: list[tuple[asyncpg.Record, uuid.UUID, Result]]) -> int:
    """One statement for the batch; returns how many were still this worker's to record."""
    columns = zip(*[(d["tenant_id"], d["id"], r.attempted_at, r.status_code, r.latency_ms, r.response_body, token)
                    for d, token, r in batch])
    row = await conn.fetchrow(SUCCEEDED, *map(list, columns), worker)
    if row["endpoints"]:
        await conn.execute(HEALTHY, row["endpoints"], row["ats"])
    # only a delivery that had failed can have later changes parked behind it (a rare path)
    after_failures = [(d["endpoint_id"], d["subject_id"], d["seq"], None) for d, _, _ in batch
                      if d["attempts"] > 0 and d["subject_id"] is not None]
    if after_failures:
        await conn.executemany(SUCCESSORS, after_failures)
    return row["delivered"]
