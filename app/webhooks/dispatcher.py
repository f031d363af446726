"""The webhook worker: claim due deliveries (claim.py), send them signed (sender.py), record what
happened (results.py), retry later.

- Wake-up: LISTEN on the outbox channel (NOTIFY at commit), a timer for the next retry, and a
  polling fallback.
- Outages: no single round can end the worker. A lost database (refused or dropped connections,
  a server shutting down, a pool connection left in a broken state) drops the pool and the
  listener, backs off and starts over with fresh ones; anything else is logged and backed off too.
  Results finished during an outage are written when the database is back, while their lease lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from app.core import retention
from app.core.db import asyncpg_dsn, release_as_is
from app.core.errors import database_unavailable
from app.catalog.scheduled import run_basis_changes
from app.core.settings import Settings
from app.proof.checkpointer import run_checkpointer
from app.duties.scheduler import run_scheduler
from app.audit.verify_job import run_verifications
from app.proof.context import Proof
from app.webhooks import claim, metrics, results
from app.webhooks.outbox import CHANNEL
from app.webhooks.sender import Result, Sender

log = logging.getLogger("consent_ledger.webhooks")

SUCCESS_BATCH_WINDOW = 0.003  # seconds a finished send waits for others to share its write
CLAIM_INTERVAL = 0.005  # while sends are in flight, claim at most this often (unless NOTIFY says new work)
T = TypeVar("T")

def database_lost(exc: BaseException) -> bool:
    """What the API answers 503 for, plus any socket error (TLS included): drop the connections."""
    return isinstance(exc, OSError) or database_unavailable(exc)


class Worker:
    def __init__(self, settings: Settings, *, name: str | None = None) -> None:
        if settings.webhook_lease_seconds <= settings.webhook_timeout_seconds:
            raise ValueError("WEBHOOK_LEASE_SECONDS must exceed WEBHOOK_TIMEOUT_SECONDS, or a slow send "
                             "could be claimed twice while it is still running")
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.pool: asyncpg.Pool | None = None
        self.listener: asyncpg.Connection | None = None
        self.sender = Sender(settings)
        self.metrics = metrics.WorkerMetrics()
        self.inflight: dict[asyncio.Task, tuple[uuid.UUID, uuid.UUID, uuid.UUID]] = {}  # delivery, lease, endpoint
        self.wake = asyncio.Event()
        self.delivered = 0
        self._successes: list[tuple[asyncpg.Record, uuid.UUID, Result, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self._notified = False
        self._last_claim = 0.0
        self._next_refresh = 0.0
        self._refresher: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set, then finish in-flight sends (or release them) and return."""
        stop_waiter = asyncio.ensure_future(stop.wait())
        failures = 0
        try:
            while not stop.is_set():
                try:
                    await self._connect()
                    await self._refresh_metrics()
                    timeout = await self._step()
                    failures = 0
                except Exception as exc:  # noqa: BLE001 - one bad round must never end the worker
                    failures = min(failures + 1, 5)
                    timeout = min(0.2 * 2 ** failures, 5.0)
                    self.wake.clear()  # a lost listener's wake-up must not cut the backoff short
                    if database_lost(exc):
                        log.warning("webhook worker: database unavailable (%s: %s); retrying in %.1fs",
                                    type(exc).__name__, exc, timeout)
                        self._drop_connections()
                    else:
                        log.error("webhook worker: round failed; retrying in %.1fs", timeout, exc_info=True)
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
                timeout=self.settings.db_connect_timeout_seconds,
                server_settings={"application_name": "consent-ledger-worker", "timezone": "UTC"},
                reset=release_as_is,  # LISTEN is on its own connection; nothing here sets session state
            )
        if self.listener is None or self.listener.is_closed():
            listener = await asyncpg.connect(dsn, timeout=self.settings.db_connect_timeout_seconds,
                                             server_settings={"application_name": "consent-ledger-worker"})
            try:
                await listener.add_listener(CHANNEL, lambda *_: self._notify())
            except BaseException:
                listener.terminate()
                raise
            listener.add_termination_listener(lambda *_: self.wake.set())
            self.listener = listener

    def _drop_connections(self) -> None:
        """After a lost database: no goodbye to a server that is gone, fresh connections next round.
        Sends in flight keep going; their results wait for the new pool (`_write`)."""
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.terminate()
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.terminate()

    async def _close(self) -> None:
        if self._refresher is not None and not self._refresher.done():
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        if self.listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.listener.close(), 1)
            self.listener = None
        await self.sender.close()
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), 5)
            except Exception:  # noqa: BLE001 - closing is best effort; terminate whatever is left
                self.pool.terminate()

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
                async with self.pool.acquire(timeout=self.settings.db_acquire_timeout_seconds) as conn:
                    await claim.release(conn, released)
            log.info("webhook worker: released %d unfinished deliveries", len(released))

    # --- one round: claim what is due, start sending it --------------------------------------------

    async def _refresh_metrics(self) -> None:
        """Start the backlog snapshot for the metrics beside the claim loop, never in its way: the
        query reads every pending delivery, and a large paused backlog must not delay a claim."""
        if time.monotonic() < self._next_refresh or (self._refresher is not None and not self._refresher.done()):
            return
        self._next_refresh = time.monotonic() + self.settings.worker_metrics_interval_seconds
        self._refresher = asyncio.create_task(self._refresh_backlog())

    async def _refresh_backlog(self) -> None:
        try:
            async with asyncio.timeout(max(1.0, self.settings.worker_metrics_interval_seconds)):
                async with self.pool.acquire(timeout=self.settings.db_acquire_timeout_seconds) as conn:
                    await self.metrics.refresh(conn)
        except Exception as exc:  # noqa: BLE001 - a stale snapshot is better than a stalled worker
            log.warning("webhook worker: backlog metrics not refreshed: %s: %s", type(exc).__name__, exc)

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
        claimed: list[asyncpg.Record] | None = None
        next_due = None
        pool = self.pool
        conn = await pool.acquire(timeout=self.settings.db_acquire_timeout_seconds)
        try:
            claimed = await claim.claim(conn, limit=free, lease_seconds=self.settings.webhook_lease_seconds,
                                        token=token, busy=busy, cap=self.settings.webhook_max_in_flight_per_endpoint)
            if not claimed:
                next_due = await claim.next_due(conn)
        finally:
            await self._release(pool, conn, claimed_already=bool(claimed))
        for delivery in claimed:
            task = asyncio.create_task(self._deliver(delivery, token))
            self.inflight[task] = (delivery["id"], token, delivery["endpoint_id"])
            task.add_done_callback(self._finished)
        if claimed:
            return 0 if len(claimed) == free else self.settings.webhook_poll_seconds
        if next_due is not None:
            return min(self.settings.webhook_poll_seconds, max(0.0, next_due.total_seconds()))
        return self.settings.webhook_poll_seconds

    async def _release(self, pool: asyncpg.Pool, conn: asyncpg.Connection, *, claimed_already: bool) -> None:
        """Hand a connection back. If that fails after a committed claim (the database going away
        as the connection is reset), the claim still stands: send it, and let the round go on."""
        try:
            await pool.release(conn)
        except Exception as exc:
            if not claimed_already or not database_lost(exc):
                raise
            log.warning("webhook worker: connection lost after a claim (%s: %s)", type(exc).__name__, exc)
            self._drop_connections()

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
        result = await self.sender.send(delivery)
        self.metrics.attempt(result)
        try:
            await self._record(delivery, token, result)
        except Exception as exc:
            if not database_lost(exc):
                raise
            log.warning("webhook worker: the result of delivery %s could not be written (%s: %s); it is sent "
                        "again when its lease ends", delivery["id"], type(exc).__name__, exc)

    async def _record(self, delivery: asyncpg.Record, token: uuid.UUID, result: Result) -> None:
        if result.ok:
            done = asyncio.get_running_loop().create_future()
            self._successes.append((delivery, token, result, done))
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.create_task(self._flush_successes())
            await done
            return

        async def write(conn: asyncpg.Connection) -> results.Failure | None:
            return await results.record_failure(conn, self.settings, self.name, delivery, token, result)

        failure = await self._write(write)
        if failure is not None and failure.dead_letter:
            self.metrics.dead_letters.labels(delivery["type"]).inc()
        if failure is not None and failure.disabled:
            self.metrics.disables.labels(failure.disabled).inc()

    async def _flush_successes(self) -> None:
        await asyncio.sleep(SUCCESS_BATCH_WINDOW)
        while self._successes:
            batch, self._successes = self._successes[:500], self._successes[500:]
            rows = [(d, token, r) for d, token, r, _ in batch]

            async def write(conn: asyncpg.Connection) -> int:
                return await results.record_successes(conn, self.name, rows)

            try:
                self.delivered += await self._write(write)
            except Exception as exc:  # noqa: BLE001 - the leases expire and these sends are retried
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for *_, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _write(self, write: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `write` on a pooled connection; through a lost database, try again (on whatever pool
        the main loop has made by then) for as long as the lease leaves the result worth writing."""
        deadline = time.monotonic() + self.settings.webhook_lease_seconds - self.settings.webhook_timeout_seconds
        delay = 0.1
        while True:
            try:
                if self.pool is None:
                    raise asyncpg.InterfaceError("no connection pool (the database is away)")
                # bounded: a pool terminated under waiting acquirers never wakes them
                async with self.pool.acquire(timeout=max(0.5, deadline - time.monotonic())) as conn:
                    return await write(conn)
            except Exception as exc:
                if not database_lost(exc) or time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Entry point for `consent-ledger worker`: runs until SIGTERM/SIGINT."""
    import signal

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(settings)
    # The key that signs checkpoints (docs/proof.md), loaded before anything starts: missing keys
    # stop the worker here, as they stop the API.
    proof = (Proof.from_settings(settings)
             if settings.checkpoint_interval_seconds > 0 or settings.duty_interval_seconds > 0
             or settings.verification_interval_seconds > 0 else None)
    served = metrics.serve(worker.metrics, settings)
    # Delivered messages, old dead letters and expired idempotency keys are purged from here, on its
    # own schedule and connection: every deployment runs a worker, so growth stays bounded without
    # a cron job to forget. Several workers purging at once skip each other's rows.
    purger = (asyncio.create_task(retention.run_purger(settings, stop))
              if settings.purge_interval_seconds > 0 else None)
    # Signed checkpoints of each tenant's log (docs/proof.md), on their own schedule and connection.
    checkpointer = (asyncio.create_task(run_checkpointer(settings, stop, proof))
                    if proof is not None and settings.checkpoint_interval_seconds > 0 else None)
    # Duties that come due or overdue (docs/duties.md): announced by webhook, recorded in their chains.
    duties = (asyncio.create_task(run_scheduler(settings, stop, proof))
              if proof is not None and settings.duty_interval_seconds > 0 else None)
    # Tenant-wide verification runs asked for by auditors (app/audit/verify_job.py), resumed after a restart.
    verifications = (asyncio.create_task(run_verifications(settings, stop, proof))
                     if proof is not None and settings.verification_interval_seconds > 0 else None)
    # Reclassifications scheduled for a later date (docs/legal-model.md), applied once due.
    scheduler = (asyncio.create_task(run_basis_changes(settings, stop))
                 if settings.basis_change_interval_seconds > 0 else None)
    log.info("webhook worker %s started", worker.name)
    try:
        await worker.run(stop)
    finally:
        stop.set()
        background = {task for task in (purger, checkpointer, scheduler, duties, verifications) if task is not None}
        if background:
            # a batch or checkpoint in progress finishes, or is cut (a cut checkpoint rolls back)
            _, cut = await asyncio.wait(background, timeout=10)
            for task in cut:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        if served is not None:
            served[0].shutdown()
    log.info("webhook worker %s stopped after %d deliveries", worker.name, worker.delivered)
