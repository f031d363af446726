"""Claiming due deliveries: fair across endpoints, leased, never holding a lock during HTTP.

- Lease: `FOR UPDATE SKIP LOCKED`, and the claim moves `next_attempt_at` past a lease before it
  commits, so a worker that dies leaves its deliveries due again when the lease ends.
- Order: a delivery is claimable only when no earlier delivery of the same (endpoint, subject) is
  still pending, so one subject's changes arrive in order while other subjects go in parallel.
- Fairness: each enabled endpoint offers at most its free slots (the per-endpoint in-flight cap
  minus what this worker already sends to it), read from its own index range; the rows are then
  taken round robin (every endpoint's first before anyone's second). A global "oldest first"
  window would fill with a hanging endpoint's backlog and starve everyone else behind it.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import timedelta

import asyncpg

# The status/time conditions are repeated on the locking level so PostgreSQL rechecks them on
# rows another worker claimed meanwhile. The cost grows with the number of enabled endpoints
# (one index probe each, in ix_webhook_deliveries_endpoint_due), not with any backlog: each
# endpoint looks at its 256 oldest due rows at most, and each of those stands for the head of its
# person's queue there (an index probe on (endpoint, subject, seq)), which is claimable when it is
# due itself. A later change can be due while its head is not (the head is being sent, or its
# lease ran out after its worker died, which moves its time past its successors'); without the
# bound a burst of such rows was re-read on every claim, and without the head lookup a window
# full of them hid the heads. The probe is a correlated subquery, not NOT EXISTS: as an
# anti-join, a planner without statistics (young tables) chose to scan the endpoint's whole
# queue for every row, and claims took seconds.
CLAIM = """
WITH busy AS (
    SELECT * FROM unnest($4::uuid[], $5::int[]) AS b(endpoint_id, n)
), candidates AS (
    SELECT c.id, c.next_attempt_at, c.turn
    FROM webhook_endpoints e
    LEFT JOIN busy ON busy.endpoint_id = e.id
    CROSS JOIN LATERAL (
        SELECT o.id, o.next_attempt_at, row_number() OVER (ORDER BY o.next_attempt_at) AS turn
        FROM (
            SELECT DISTINCT h.id, h.next_attempt_at FROM (
                SELECT d.id, d.next_attempt_at, d.subject_id FROM webhook_deliveries d
                WHERE d.endpoint_id = e.id AND d.status = 'pending' AND d.next_attempt_at <= now()
                ORDER BY d.next_attempt_at
                LIMIT 256
            ) w
            CROSS JOIN LATERAL (
                SELECT w.id, w.next_attempt_at WHERE w.subject_id IS NULL
                UNION ALL
                (SELECT p.id, p.next_attempt_at FROM webhook_deliveries p
                 WHERE w.subject_id IS NOT NULL AND p.endpoint_id = e.id AND p.subject_id = w.subject_id
                   AND p.status = 'pending'
                 ORDER BY p.seq LIMIT 1)
            ) h
            WHERE h.next_attempt_at <= now()
            ORDER BY h.next_attempt_at
            LIMIT $6 - COALESCE(busy.n, 0)
        ) o
    ) c
    WHERE e.enabled AND e.deleted_at IS NULL AND COALESCE(busy.n, 0) < $6
), due AS (
    -- the candidates are picked once (an init plan), then locked by primary key
    SELECT d.id FROM webhook_deliveries d
    WHERE d.id = ANY(ARRAY(SELECT id FROM candidates ORDER BY turn, next_attempt_at LIMIT $1))
      AND d.status = 'pending' AND d.next_attempt_at <= now()
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_deliveries d
SET next_attempt_at = now() + make_interval(secs => $2), lease_token = $3
FROM due, webhook_endpoints e, webhook_messages m
WHERE d.id = due.id AND e.id = d.endpoint_id AND m.id = d.message_id
RETURNING d.id, d.tenant_id, d.endpoint_id, d.subject_id, d.seq, d.attempts, d.message_id, m.type, m.body, e.url,
          e.secret, CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret END AS previous_secret
"""

# The next moment something becomes due (a retry, or an expired lease), per endpoint range.
NEXT_DUE = """
SELECT min(n.at) - now() FROM webhook_endpoints e CROSS JOIN LATERAL (
    SELECT d.next_attempt_at AS at FROM webhook_deliveries d
    WHERE d.endpoint_id = e.id AND d.status = 'pending' AND d.next_attempt_at > now()
      AND d.next_attempt_at < 'infinity'
    ORDER BY d.next_attempt_at LIMIT 1) n
WHERE e.enabled AND e.deleted_at IS NULL
"""

RELEASE = "UPDATE webhook_deliveries SET next_attempt_at = now(), lease_token = NULL WHERE id = $1 AND lease_token = $2"


async def claim(conn: asyncpg.Connection, *, limit: int, lease_seconds: float, token: uuid.UUID,
                busy: Counter, cap: int) -> list[asyncpg.Record]:
    """Up to `limit` due deliveries, leased under `token`; `busy` counts this worker's sends per endpoint."""
    return await conn.fetch(CLAIM, limit, lease_seconds, token, list(busy), list(busy.values()), cap)


async def next_due(conn: asyncpg.Connection) -> timedelta | None:
    return await conn.fetchval(NEXT_DUE)


async def release(conn: asyncpg.Connection, leases: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
    """Make unfinished deliveries due again at once (on shutdown), unless someone else owns them now."""
    await conn.executemany(RELEASE, leases)
