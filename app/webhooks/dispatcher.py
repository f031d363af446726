"""The webhook worker: claim due deliveries, send them signed, record what happened, retry later.

- Claim: `FOR UPDATE SKIP LOCKED`, and the claim moves `next_attempt_at` past a lease before it
  commits, so no lock is held during HTTP and a worker that dies leaves its deliveries due again
  when the lease ends. Several workers share the table without double work beyond at-least-once.
- Order: a delivery is claimable only when no earlier delivery of the same (endpoint, subject) is
  still pending, so one subject's changes arrive in order while other subjects go in parallel.
- Wake-up: LISTEN on the outbox channel (NOTIFY at commit), a timer for the next retry, and a
  polling fallback; a lost database connection is retried with backoff, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
import random
import socket
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import httpx

from app.core.db import asyncpg_dsn
from app.core.settings import Settings
from app.webhooks import signing, ssrf
from app.webhooks.outbox import CHANNEL, PAUSE, SUCCESSORS

log = logging.getLogger("consent_ledger.webhooks")

RESPONSE_BODY_LIMIT = 1024
SUCCESS_BATCH_WINDOW = 0.003  # seconds a finished send waits for others to share its write
MAX_TRANSPORTS = 256  # receiver origins with an open connection pool per worker
CLAIM_INTERVAL = 0.005  # while sends are in flight, claim at most this often (unless NOTIFY says new work)
USER_AGENT = "consent-ledger-webhooks/0.1"
STATIC_HEADERS = {"user-agent": USER_AGENT, "content-type": "application/json"}

# Candidates are ranked per endpoint so one endpoint (say, a hanging receiver with a long backlog)
# never takes more than WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT of this worker's send slots. The
# status/time conditions stay on the locking level so PostgreSQL rechecks them on rows another
# worker claimed meanwhile.
CLAIM = """
WITH candidates AS (
    SELECT c.id, c.next_attempt_at,
           row_number() OVER (PARTITION BY c.endpoint_id ORDER BY c.next_attempt_at) + COALESCE(busy.n, 0) AS rank
    FROM (
        SELECT d.id, d.endpoint_id, d.next_attempt_at FROM webhook_deliveries d
        JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.enabled AND e.deleted_at IS NULL
        WHERE d.status = 'pending' AND d.next_attempt_at <= now()
          AND NOT EXISTS (
              SELECT 1 FROM webhook_deliveries p
              WHERE p.endpoint_id = d.endpoint_id AND p.subject_id = d.subject_id AND p.status = 'pending'
                AND p.seq < d.seq)
        ORDER BY d.next_attempt_at
        LIMIT $1 * 4
    ) c
    LEFT JOIN unnest($4::uuid[], $5::int[]) AS busy(endpoint_id, n) ON busy.endpoint_id = c.endpoint_id
), due AS (
    SELECT d.id FROM webhook_deliveries d JOIN candidates c ON c.id = d.id
    WHERE c.rank <= $6 AND d.status = 'pending' AND d.next_attempt_at <= now()
    ORDER BY c.next_attempt_at
    LIMIT $1
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_deliveries d
SET next_attempt_at = now() + make_interval(secs => $2), lease_token = $3
FROM due, webhook_endpoints e, webhook_messages m
WHERE d.id = due.id AND e.id = d.endpoint_id AND m.id = d.message_id
RETURNING d.id, d.tenant_id, d.endpoint_id, d.subject_id, d.seq, d.attempts, d.message_id, m.body, e.url, e.secret,
          CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret END AS previous_secret
"""

NEXT_DUE = """
SELECT min(next_attempt_at) - now() FROM webhook_deliveries
WHERE status = 'pending' AND next_attempt_at > now() AND next_attempt_at < 'infinity'
"""

LOG_ATTEMPT = """
INSERT INTO webhook_attempts
    (tenant_id, delivery_id, attempted_at, status_code, latency_ms, response_body, error, worker)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""

# Successes are recorded in batches (one statement for every send that finished in the last few
# milliseconds): on the hot path this halves the database round trips per delivery. A later
# message of the same (endpoint, subject) stays unclaimable until its predecessor's batch commits.
SUCCEEDED = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::timestamptz[], $4::int[], $5::float8[], $6::text[], $7::uuid[])
        AS u(tenant_id, delivery_id, attempted_at, status_code, latency_ms, response_body, token)
), attempt AS (
    INSERT INTO webhook_attempts
        (tenant_id, delivery_id, attempted_at, status_code, latency_ms, response_body, worker)
    SELECT tenant_id, delivery_id, attempted_at, status_code, latency_ms, response_body, $8 FROM input
    RETURNING 1
), delivered AS (
    UPDATE webhook_deliveries d SET status = 'delivered', attempts = d.attempts + 1, delivered_at = now(),
        last_attempt_at = i.attempted_at, last_status_code = i.status_code, last_error = NULL, lease_token = NULL
    FROM input i WHERE d.id = i.delivery_id AND d.lease_token = i.token
    RETURNING d.endpoint_id, i.attempted_at
), healthy AS (
    UPDATE webhook_endpoints e SET failing_since = NULL
    FROM (SELECT endpoint_id, max(attempted_at) AS at FROM delivered GROUP BY endpoint_id) h
    WHERE e.id = h.endpoint_id AND e.failing_since IS NOT NULL AND e.failing_since <= h.at
    RETURNING 1
)
SELECT count(*) FROM delivered
"""

FAILED = """
WITH attempt AS (""" + LOG_ATTEMPT + """ RETURNING 1)
UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = $3, last_status_code = $4,
    last_error = COALESCE($7, 'HTTP ' || $4), lease_token = NULL,
    status = CASE WHEN $10::float8 IS NULL THEN 'failed' ELSE 'pending' END,
    failed_at = CASE WHEN $10::float8 IS NULL THEN now() END,
    next_attempt_at = CASE WHEN $10::float8 IS NULL THEN next_attempt_at
                           ELSE now() + make_interval(secs => $10::float8) END
WHERE id = $2 AND lease_token = $9
RETURNING status, next_attempt_at
"""

# The endpoint row is locked first, so the decision reads its current failure streak.
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
    SELECT id, COALESCE(failing_since, $2) AS since,
           $3 OR COALESCE(failing_since, $2) < now() - make_interval(secs => $4) AS disable
    FROM webhook_endpoints WHERE id = $1 FOR UPDATE
) x
WHERE e.id = x.id
RETURNING e.enabled
"""

RELEASE = "UPDATE webhook_deliveries SET next_attempt_at = now(), lease_token = NULL WHERE id = $1 AND lease_token = $2"


@dataclass
class Result:
    attempted_at: datetime
    status_code: int | None = None
    latency_ms: float | None = None
    response_body: str | None = None
    error: str | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def next_delay(settings: Settings, attempts_done: int, retry_after: float | None) -> float | None:
    """Seconds until the next attempt after `attempts_done` attempts, or None when the last one failed."""
    schedule = settings.webhook_retry_schedule
    if attempts_done >= len(schedule):
        return None
    delay = schedule[attempts_done] * (1 + random.uniform(-1, 1) * settings.webhook_retry_jitter)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.webhook_max_retry_after_seconds))
    return max(0.0, delay)


class Worker:
    def __init__(self, settings: Settings, *, name: str | None = None) -> None:
        if settings.webhook_lease_seconds <= settings.webhook_timeout_seconds:
            raise ValueError("WEBHOOK_LEASE_SECONDS must exceed WEBHOOK_TIMEOUT_SECONDS, or a slow send "
                             "could be claimed twice while it is still running")
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.pool: asyncpg.Pool | None = None
        self.listener: asyncpg.Connection | None = None
        # One connection pool per receiver origin. The URL sent is rewritten to the IP
        # the SSRF guard checked, and httpx pools connections by that IP: a shared pool would reuse a
        # TLS connection verified for one hostname to talk to another hostname on the same IP.
        self.transports: OrderedDict[tuple[str, str], httpx.AsyncHTTPTransport] = OrderedDict()
        s = settings
        self._timeouts = {"connect": s.webhook_connect_timeout_seconds, "read": s.webhook_timeout_seconds,
                          "write": s.webhook_timeout_seconds, "pool": s.webhook_timeout_seconds}
        self.inflight: dict[asyncio.Task, tuple[uuid.UUID, uuid.UUID, uuid.UUID]] = {}  # delivery, lease, endpoint
        self.wake = asyncio.Event()
        self.delivered = 0
        self._successes: list[tuple[asyncpg.Record, uuid.UUID, Result, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self._notified = False
        self._last_claim = 0.0

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set, then finish in-flight sends (or release them) and return."""
        stop_waiter = asyncio.ensure_future(stop.wait())
        failures = 0
        try:
            while not stop.is_set():
                try:
                    await self._connect()
                    timeout = await self._step()
                    failures = 0
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    failures = min(failures + 1, 5)
                    timeout = min(0.2 * 2 ** failures, 5.0)
                    self.wake.clear()  # a lost listener's wake-up must not cut the backoff short
                    log.warning("webhook worker: database unavailable (%s); retrying in %.1fs", exc, timeout)
                    await self._drop_listener()
                if timeout > 0:
                    wake = asyncio.ensure_future(self.wake.wait())
                    await asyncio.wait([wake, stop_waiter], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                    wake.cancel()
        finally:
            stop_waiter.cancel()
            await self._drain()
            await self._close()

    async def _connect(self) -> None:
        dsn = asyncpg_dsn(self.settings.database_url)
        if self.pool is None:
            self.pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=max(2, self.settings.webhook_concurrency // 8),
                server_settings={"application_name": "consent-ledger-worker", "timezone": "UTC"},
            )
        if self.listener is None or self.listener.is_closed():
            listener = await asyncpg.connect(dsn, server_settings={"application_name": "consent-ledger-worker"})
            await listener.add_listener(CHANNEL, lambda *_: self._notify())
            listener.add_termination_listener(lambda *_: self.wake.set())
            self.listener = listener

    async def _drop_listener(self) -> None:
        if self.listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.listener.close(), 1)
            self.listener = None

    async def _close(self) -> None:
        await self._drop_listener()
        for transport in self.transports.values():
            await transport.aclose()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), 5)

    async def _drain(self) -> None:
        """On shutdown: let sends finish within the send timeout; release the leases of the rest."""
        if not self.inflight:
            return
        _, pending = await asyncio.wait(list(self.inflight), timeout=self.settings.webhook_timeout_seconds + 1)
        for task in pending:
            task.cancel()
        released = [self.inflight[t][:2] for t in pending]
        await asyncio.gather(*pending, return_exceptions=True)
        if released and self.pool is not None:
            with contextlib.suppress(Exception):
                async with self.pool.acquire() as conn:
                    await conn.executemany(RELEASE, released)
            log.info("webhook worker: released %d unfinished deliveries", len(released))

    # --- one round: claim what is due, start sending it --------------------------------------------

    async def _step(self) -> float:
        """Claim and start sends; return how long to wait before the next round."""
        self.wake.clear()
        free = self.settings.webhook_concurrency - len(self.inflight)
        waited = time.monotonic() - self._last_claim
        if free <= 0 or (self.inflight and not self._notified and waited < CLAIM_INTERVAL):
            # sends finishing within a few milliseconds share one claim instead of one each;
            # new work (NOTIFY) is claimed at once
            return self.settings.webhook_poll_seconds if free <= 0 else CLAIM_INTERVAL - waited
        self._notified, self._last_claim = False, time.monotonic()
        token = uuid.uuid4()
        busy = Counter(endpoint for _, _, endpoint in self.inflight.values())
        async with self.pool.acquire() as conn:
            claimed = await conn.fetch(CLAIM, free, self.settings.webhook_lease_seconds, token, list(busy),
                                       list(busy.values()), self.settings.webhook_max_in_flight_per_endpoint)
            next_due = await conn.fetchval(NEXT_DUE) if not claimed else None
        for delivery in claimed:
            task = asyncio.create_task(self._deliver(delivery, token))
            self.inflight[task] = (delivery["id"], token, delivery["endpoint_id"])
            task.add_done_callback(self._finished)
        if claimed:
            return 0 if len(claimed) == free else self.settings.webhook_poll_seconds
        if next_due is not None:
            return min(self.settings.webhook_poll_seconds, max(0.0, next_due.total_seconds()))
        return self.settings.webhook_poll_seconds

    def _transport(self, scheme: str, origin: str) -> httpx.AsyncHTTPTransport:
        """The connection pool for one receiver origin. httpx's transport is used without the Client
        around it (no cookies, auth, redirects or URL merging to run): measured 15-20 % less CPU per
        send, and the worker's CPU is its limit (bench/README.md)."""
        key = (scheme, origin)
        transport = self.transports.get(key)
        if transport is None:
            cap = self.settings.webhook_max_in_flight_per_endpoint
            transport = httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=cap, max_keepalive_connections=cap))
            self.transports[key] = transport
            if len(self.transports) > MAX_TRANSPORTS:  # close the least recently used once its sends are over
                _, oldest = self.transports.popitem(last=False)
                asyncio.get_running_loop().call_later(
                    self.settings.webhook_timeout_seconds + 1, lambda t=oldest: asyncio.ensure_future(t.aclose()))
        self.transports.move_to_end(key)
        return transport

    def _notify(self) -> None:
        self._notified = True
        self.wake.set()

    def _finished(self, task: asyncio.Task) -> None:
        self.inflight.pop(task, None)
        self.wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook worker: delivery task failed", exc_info=task.exception())

    # --- one delivery --------------------------------------------------------------------------------

    async def _deliver(self, delivery: asyncpg.Record, token: uuid.UUID) -> None:
        result = await self._send(delivery)
        await self._record(delivery, token, result)

    async def _send(self, delivery: asyncpg.Record) -> Result:
        body = delivery["body"].encode()
        secrets_in_use = [delivery["secret"]] + ([delivery["previous_secret"]] if delivery["previous_secret"] else [])
        started_wall = time.time()
        result = Result(attempted_at=datetime.fromtimestamp(started_wall, UTC))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_seconds):  # DNS, connect, send, answer
                target = await ssrf.resolve(delivery["url"], self.settings.webhook_allowed_hosts)
                headers = signing.headers(secrets_in_use, str(delivery["message_id"]), int(started_wall), body)
                headers.update(STATIC_HEADERS)
                headers["host"] = target.host_header
                extensions: dict = {"timeout": self._timeouts}
                if target.sni_hostname:
                    extensions["sni_hostname"] = target.sni_hostname
                scheme = target.url.split(":", 1)[0]
                request = httpx.Request("POST", target.url, headers=headers, content=body, extensions=extensions)
                response = await self._transport(scheme, target.host_header).handle_async_request(request)
                try:  # a transport never follows redirects: a 3xx is an answer like any other
                    result.status_code = response.status_code
                    result.retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
                    result.response_body = await _read_limited(response)
                finally:
                    await response.aclose()
        except ssrf.UnsafeURL as exc:
            result.error = f"refused by the SSRF guard: {exc.reason}"
        except (TimeoutError, httpx.TimeoutException):
            result.error = f"timed out after {self.settings.webhook_timeout_seconds:g}s"
        except httpx.HTTPError as exc:
            result.error = f"{type(exc).__name__}: {exc}"[:500]
        except Exception as exc:  # noqa: BLE001 - whatever the receiver sends back is a failed attempt, never a crash
            log.warning("webhook worker: unexpected error sending %s", delivery["id"], exc_info=True)
            result.error = f"{type(exc).__name__}: {exc}"[:500]
        if result.response_body:
            result.response_body = result.response_body.replace("\x00", "")  # PostgreSQL text refuses NUL
        if result.error:
            result.error = result.error.replace("\x00", "")
        result.latency_ms = round((time.perf_counter() - started) * 1000, 2)
        return result

    async def _record(self, delivery: asyncpg.Record, token: uuid.UUID, result: Result) -> None:
        if result.ok:
            done = asyncio.get_running_loop().create_future()
            self._successes.append((delivery, token, result, done))
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.create_task(self._flush_successes())
            await done
            return
        attempt = (delivery["tenant_id"], delivery["id"], result.attempted_at, result.status_code,
                   result.latency_ms, result.response_body, result.error, self.name)
        async with self.pool.acquire() as conn:
            gone = result.status_code == 410
            delay = None if gone else next_delay(self.settings, delivery["attempts"] + 1, result.retry_after)
            async with conn.transaction():
                updated = await conn.fetchrow(FAILED, *attempt, token, delay)
                if updated is None:
                    return  # the lease was lost (e.g. a manual retry); the newer claim owns the outcome
                if delivery["subject_id"] is not None:  # later changes wait for the retry, or go after a dead letter
                    retry_at = updated["next_attempt_at"] if updated["status"] == "pending" else None
                    await conn.execute(SUCCESSORS, delivery["endpoint_id"], delivery["subject_id"], delivery["seq"],
                                       retry_at)
                enabled = await conn.fetchval(ENDPOINT_FAILING, delivery["endpoint_id"], result.attempted_at, gone,
                                              self.settings.webhook_disable_after_seconds)
                if not enabled:
                    await conn.execute(PAUSE, delivery["endpoint_id"])

    async def _flush_successes(self) -> None:
        await asyncio.sleep(SUCCESS_BATCH_WINDOW)
        while self._successes:
            batch, self._successes = self._successes[:500], self._successes[500:]
            columns = zip(*[(d["tenant_id"], d["id"], r.attempted_at, r.status_code, r.latency_ms, r.response_body,
                             token) for d, token, r, _ in batch])
            # only a delivery that had failed can have later changes parked behind it (a rare path)
            after_failures = [(d["endpoint_id"], d["subject_id"], d["seq"], None) for d, *_ in batch
                              if d["attempts"] > 0 and d["subject_id"] is not None]
            try:
                async with self.pool.acquire() as conn:
                    self.delivered += await conn.fetchval(SUCCEEDED, *map(list, columns), self.name)
                    if after_failures:
                        await conn.executemany(SUCCESSORS, after_failures)
            except Exception as exc:  # noqa: BLE001 - the leases expire and these sends are retried
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for *_, done in batch:
                if not done.done():
                    done.set_result(None)


async def _read_limited(response: httpx.Response) -> str:
    """At most RESPONSE_BODY_LIMIT bytes of the response, for the attempt log."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= RESPONSE_BODY_LIMIT:
            break
    return b"".join(chunks)[:RESPONSE_BODY_LIMIT].decode("utf-8", "replace")


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Entry point for `consent-ledger worker`: runs until SIGTERM/SIGINT."""
    import signal

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(settings)
    log.info("webhook worker %s started", worker.name)
    await worker.run(stop)
    log.info("webhook worker %s stopped after %d deliveries", worker.name, worker.delivered)
