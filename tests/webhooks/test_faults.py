"""Faults the webhook worker must survive without losing or reordering a message.

Every test here is bounded (each wait has a timeout) and loopback-only: a worker killed with
SIGKILL mid-send, a worker stopped with SIGTERM mid-send, a receiver that goes away and comes
back on the same port, a receiver that hangs, and a PostgreSQL restart under a running worker.
The process tests run the real `python -m app.cli worker` command as a child process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from app.cli import migrate
from app.core.embedded_pg import EmbeddedPostgres, free_port
from app.webhooks.dispatcher import Worker
from app.webhooks.dispatcher import log as webhook_log
from app.webhooks.outbox import enqueue_test
from app.webhooks.signing import new_secret
from tests.helpers import sign_up
from tests.webhooks.receiver import Answer, Received, Receiver

pytestmark = pytest.mark.usefixtures("demo")

ROOT = Path(__file__).resolve().parents[2]
PROCESS_LEASE = 3.0  # WEBHOOK_LEASE_SECONDS of the worker processes below


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


# --- the worker as a separate process ------------------------------------------------------------

class WorkerProcess:
    """`python -m app.cli worker` against the test database, its output in a temporary log file."""

    def __init__(self, database_url: str, **env: str) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix="cl-worker-", suffix=".log")[1])
        environ = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOK_")}
        environ.update({
            "DATABASE_URL": database_url, "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
            "WEBHOOK_LEASE_SECONDS": str(PROCESS_LEASE), "WEBHOOK_TIMEOUT_SECONDS": "2",
            "WEBHOOK_CONNECT_TIMEOUT_SECONDS": "0.5", "WEBHOOK_POLL_SECONDS": "0.5",
            "WEBHOOK_RETRY_SCHEDULE": "0,0.2,0.3", "PYTHONUNBUFFERED": "1", "WORKER_METRICS_PORT": "0", **env,
        })
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], cwd=ROOT, env=environ,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def started(self, timeout: float = 15.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.output}")
            return "started" in self.output

        await until(ready, timeout, "the worker process to start")

    async def exited(self, timeout: float) -> int:
        await until(lambda: self.proc.poll() is not None, timeout,
                    f"the worker process to exit; its output so far:\n{self.output}")
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def cleanup(self) -> None:
        self.kill()
        self.log_path.unlink(missing_ok=True)


@pytest.fixture
def worker_process(database_url: str) -> Iterator[Callable[..., WorkerProcess]]:
    """worker_process(**env) -> a running worker process; always killed at teardown."""
    started: list[WorkerProcess] = []

    def start(**env: str) -> WorkerProcess:
        w = WorkerProcess(database_url, **env)
        started.append(w)
        return w

    try:
        yield start
    finally:
        for w in started:
            w.cleanup()


async def deliveries(db: asyncpg.Connection, endpoint_id: str) -> list[asyncpg.Record]:
    """One endpoint's deliveries in ledger order (subject, then the consent event's seq)."""
    return await db.fetch(
        """SELECT d.id, d.message_id, d.status, d.attempts, d.lease_token, d.next_attempt_at, d.seq,
                  m.subject_ref, ev.seq AS event_seq, d.next_attempt_at <= now() AS due
           FROM webhook_deliveries d JOIN webhook_messages m ON m.id = d.message_id
           LEFT JOIN consent_events ev ON ev.id = m.event_id
           WHERE d.endpoint_id = $1 ORDER BY m.subject_ref, ev.seq""", uuid.UUID(endpoint_id))


def first_receipts(items: list[Received]) -> list[Received]:
    """The first receipt of every webhook-id, in arrival order (retries may repeat an id)."""
    seen: set[str] = set()
    firsts = []
    for item in sorted(items, key=lambda r: r.received_at):
        if item.id not in seen:
            seen.add(item.id)
            firsts.append(item)
    return firsts


class HoldFirst:
    """A receiver `respond` that holds the first request for `hold` seconds and signals its arrival."""

    def __init__(self, hold: float, then: float = 0.0) -> None:
        self.hold, self.then = hold, then
        self.first: Received | None = None
        self.arrived = asyncio.Event()

    def __call__(self, item: Received) -> Answer:
        if self.first is None:
            self.first = item
            self.arrived.set()
            return Answer(delay=self.hold)
        return Answer(delay=self.then)


# --- 1. SIGKILL mid-delivery -----------------------------------------------------------------------

async def test_worker_killed_mid_delivery_loses_nothing(client, auth, tenant, register, db, worker_process,
                                                        start_worker):
    hold = HoldFirst(hold=3.0)
    receiver = await Receiver(hold).start()
    try:
        endpoint = await register(receiver)
        process = worker_process()
        await process.started()
        response = await sign_up(client, auth(tenant), "member-kill", {"marketing", "marketing-sms"})
        assert response.status_code == 201, response.text
        expected = [d["message_id"] for d in await deliveries(db, endpoint["id"])]
        assert len(expected) >= 2

        await asyncio.wait_for(hold.arrived.wait(), 10)
        held_id = hold.first.id
        os.kill(process.proc.pid, signal.SIGKILL)
        assert process.proc.wait(timeout=5) == -signal.SIGKILL
        killed_at = time.time()

        # The claim was committed before the send: the delivery is leased to a dead worker, not lost.
        row = await db.fetchrow("SELECT status, lease_token FROM webhook_deliveries WHERE message_id = $1",
                                uuid.UUID(held_id))
        assert row["status"] == "pending" and row["lease_token"] is not None
        assert str(expected[0]) == held_id  # the subject's first change went first

        start_worker()  # a fresh worker takes over once the lease ends
        await until(lambda: {r.id for r in receiver.received if r.received_at > killed_at}
                    >= {str(m) for m in expected}, 12, "every message to arrive after the kill")

        after = first_receipts([r for r in receiver.received if r.received_at > killed_at])
        assert [r.id for r in after] == [str(m) for m in expected]  # same ids, ledger order
        redelivered = after[0]
        assert redelivered.id == held_id
        # Not before the dead worker's lease ended (claimed just before the held request arrived).
        assert redelivered.received_at - hold.first.received_at >= PROCESS_LEASE - 0.5
        assert redelivered.json == hold.first.json

        rows = await until(lambda: _all_delivered(db, endpoint["id"]), 5, "the deliveries to be marked delivered")
        assert all(r["lease_token"] is None for r in rows)
        workers = await db.fetch(
            "SELECT a.worker, a.status_code FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id "
            "WHERE d.message_id = $1", uuid.UUID(held_id))
        assert [(w["worker"], w["status_code"]) for w in workers] == [("test-worker", 200)]
    finally:
        await receiver.stop()


async def _all_delivered(db, endpoint_id: str) -> list[asyncpg.Record] | None:
    rows = await deliveries(db, endpoint_id)
    return rows if rows and all(r["status"] == "delivered" for r in rows) else None


# --- 2. SIGTERM mid-delivery -------------------------------------------------------------------------

async def test_sigterm_finishes_the_send_in_flight_and_exits_cleanly(client, auth, tenant, register, db,
                                                                      worker_process):
    hold = HoldFirst(hold=0.5, then=0.5)
    receiver = await Receiver(hold).start()
    try:
        endpoint = await register(receiver)
        process = worker_process()
        await process.started()
        response = await sign_up(client, auth(tenant), "member-term", {"marketing", "marketing-sms"})
        assert response.status_code == 201, response.text

        await asyncio.wait_for(hold.arrived.wait(), 10)
        process.proc.send_signal(signal.SIGTERM)
        sent_at = time.monotonic()
        code = await process.exited(timeout=6)
        assert code == 0, process.output
        assert time.monotonic() - sent_at < 5
        assert "stopped after" in process.output

        # The send in flight was answered and recorded: delivered, not lost and not left leased.
        in_flight = await db.fetchrow(
            "SELECT status, attempts, lease_token FROM webhook_deliveries WHERE message_id = $1",
            uuid.UUID(hold.first.id))
        assert dict(in_flight) == {"status": "delivered", "attempts": 1, "lease_token": None}
        assert hold.first.id in {r.id for r in receiver.received}
        # Whatever the worker did not send is still pending, unleased and due at once.
        rows = await deliveries(db, endpoint["id"])
        assert len(rows) >= 2
        for r in rows:
            assert r["status"] == "delivered" or (r["status"] == "pending" and r["lease_token"] is None
                                                  and r["due"]), dict(r)
        delivered_ids = {str(r["message_id"]) for r in rows if r["status"] == "delivered"}
        assert {r.id for r in receiver.received} == delivered_ids
    finally:
        await receiver.stop()


# --- 3. receiver down, then back -----------------------------------------------------------------------

async def test_receiver_down_then_back_gets_everything_in_ledger_order(client, auth, tenant, register, db,
                                                                        start_worker):
    receiver = await Receiver().start()
    port = receiver.port
    try:
        endpoint = await register(receiver)
        await receiver.stop()  # the port is closed: connections are refused
        start_worker(webhook_retry_schedule=(0, 0.5, 0.5, 0.5, 0.5, 1, 1, 1, 2, 2))
        headers = auth(tenant)
        subjects = ["member-a", "member-b", "member-c"]
        for subject in subjects:
            assert (await sign_up(client, headers, subject, {"marketing", "marketing-sms"})).status_code == 201
        for subject in subjects:
            response = await client.post(f"/v1/subjects/{subject}/consents/marketing-sms/withdraw", json={},
                                         headers=headers)
            assert response.status_code == 200, response.text
        for subject in subjects:
            response = await client.post(f"/v1/subjects/{subject}/consents/marketing/withdraw", json={},
                                         headers=headers)
            assert response.status_code == 200, response.text
        for subject in subjects:  # regrant both through the signup form
            assert (await sign_up(client, headers, subject, {"marketing", "marketing-sms"})).status_code == 201

        rows = await deliveries(db, endpoint["id"])
        by_subject = {s: [str(r["message_id"]) for r in rows if r["subject_ref"] == s] for s in subjects}
        assert all(len(ids) >= 3 for ids in by_subject.values()), by_subject

        # While the receiver is down every subject's first delivery fails and waits for a retry.
        async def all_failing() -> bool:
            n = await db.fetchval(
                "SELECT count(DISTINCT d.subject_id) FROM webhook_attempts a "
                "JOIN webhook_deliveries d ON d.id = a.delivery_id "
                "WHERE d.endpoint_id = $1 AND a.status_code IS NULL AND a.error LIKE 'ConnectError%'",
                uuid.UUID(endpoint["id"]))
            return n == len(subjects)

        await until(all_failing, 5, "a refused connection for every subject")
        assert receiver.received == []
        statuses = await db.fetch("SELECT status FROM webhook_deliveries WHERE endpoint_id = $1",
                                  uuid.UUID(endpoint["id"]))
        assert {r["status"] for r in statuses} == {"pending"}

        await receiver.start(port=port)  # back on the same address
        await until(lambda: {r.id for r in receiver.received} >= {m for ids in by_subject.values() for m in ids},
                    12, "every message after the receiver came back")

        firsts = first_receipts(receiver.received)
        for subject, ids in by_subject.items():
            got = [r for r in firsts if r.json["data"]["subject_id"] == subject]
            assert [r.id for r in got] == ids, f"{subject}: received out of ledger order"
            versions: dict[str, list[int]] = {}
            for r in got:
                versions.setdefault(r.json["data"]["purpose"], []).append(r.json["data"]["version"])
            for purpose, seen in versions.items():
                assert seen == sorted(set(seen)), f"{subject}/{purpose}: versions {seen} not strictly increasing"
            assert len(versions["marketing-sms"]) == 3 and len(versions["marketing"]) == 3

        rows = await until(lambda: _all_delivered(db, endpoint["id"]), 5, "the deliveries to be marked delivered")
        assert len(rows) == sum(len(ids) for ids in by_subject.values())
        state = await db.fetchrow("SELECT enabled, failing_since FROM webhook_endpoints WHERE id = $1",
                                  uuid.UUID(endpoint["id"]))
        assert state["enabled"] and state["failing_since"] is None
    finally:
        await receiver.stop()


# --- 4. a hanging receiver -------------------------------------------------------------------------------

async def test_hanging_receiver_times_out_and_does_not_hold_up_others(client, auth, tenant, register, db,
                                                                      start_worker):
    good = await Receiver().start()
    hanging = await Receiver(lambda _: Answer(delay=5.0)).start()
    try:
        stuck = await register(hanging, description="never answers in time")  # first: its sends start first
        fine = await register(good, description="answers at once")
        start_worker(webhook_timeout_seconds=2.0, webhook_lease_seconds=3.0)
        started = time.monotonic()
        response = await sign_up(client, auth(tenant), "member-hang", {"marketing", "marketing-sms"})
        assert response.status_code == 201, response.text
        expected = len(await deliveries(db, fine["id"]))
        assert expected >= 2

        # Every message reaches the healthy endpoint while the hanging send is still outstanding.
        await good.wait_for(expected, timeout=1.5)
        assert time.monotonic() - started < 1.5
        assert await db.fetchval("SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d "
                                 "ON d.id = a.delivery_id WHERE d.endpoint_id = $1", uuid.UUID(stuck["id"])) == 0
        assert [r.id for r in first_receipts(good.received)] == [str(r["message_id"])
                                                                for r in await deliveries(db, fine["id"])]

        first = (await deliveries(db, stuck["id"]))[0]

        async def retried() -> list[asyncpg.Record] | None:
            rows = await db.fetch("SELECT status_code, error, latency_ms FROM webhook_attempts "
                                  "WHERE delivery_id = $1 ORDER BY attempted_at", first["id"])
            return rows if len(rows) >= 2 else None

        attempts = await until(retried, 6, "a second attempt at the hanging endpoint")
        for a in attempts:
            assert a["status_code"] is None and "timed out" in a["error"], dict(a)
            assert 1900 <= a["latency_ms"] < 3500, dict(a)  # cut off by the 2 s timeout, not the 5 s hang
        row = await db.fetchrow("SELECT status, attempts, last_error FROM webhook_deliveries WHERE id = $1",
                                first["id"])
        assert row["status"] == "pending" and row["attempts"] >= 2 and "timed out" in row["last_error"]
        # Only the head of that subject's queue was tried; its later changes wait behind it.
        later = await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND attempts > 0 "
                                  "AND id <> $2", uuid.UUID(stuck["id"]), first["id"])
        assert later == 0
    finally:
        await good.stop()
        await hanging.stop()


# --- 5. PostgreSQL restart under a running worker -------------------------------------------------------

async def test_worker_survives_a_database_restart(settings):
    """A separate PostgreSQL, so restarting it cannot disturb the shared test database."""
    tmp = Path(tempfile.mkdtemp(prefix="cl-faults-pg-"))
    pg = EmbeddedPostgres(tmp / "pg", free_port(), fast_unsafe=True, database="consent_ledger")
    receiver = await Receiver().start()
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    stop = asyncio.Event()
    task: asyncio.Task | None = None

    async def enqueue(endpoint_id: uuid.UUID | None = None) -> tuple[uuid.UUID, str]:
        conn = await asyncpg.connect(_plain(pg.url))
        try:
            async with conn.transaction():
                if endpoint_id is None:
                    secret = new_secret()
                    receiver.secrets.append(secret)
                    endpoint_id = await conn.fetchval(
                        "INSERT INTO webhook_endpoints (tenant_id, url, secret, kinds) VALUES ($1, $2, $3, '{}') "
                        "RETURNING id", tenant, receiver.url, secret)
                message_id, _ = await enqueue_test(conn, tenant=tenant, endpoint_id=endpoint_id)
            return endpoint_id, str(message_id)
        finally:
            await conn.close()

    async def status(message_id: str) -> str | None:
        conn = await asyncpg.connect(_plain(pg.url))
        try:
            return await conn.fetchval("SELECT status FROM webhook_deliveries WHERE message_id = $1",
                                       uuid.UUID(message_id))
        finally:
            await conn.close()

    try:
        await asyncio.to_thread(pg.start)
        owner_url, _ = await asyncio.to_thread(pg.ensure_roles, pg.database)
        await asyncio.to_thread(migrate, owner_url, "consent_ledger_runtime")
        worker = Worker(dataclasses.replace(settings, database_url=pg.url), name="restart-worker")
        task = asyncio.create_task(worker.run(stop))

        endpoint_id, before = await enqueue()
        await receiver.wait_for(1, timeout=5)
        assert receiver.received[0].id == before
        await until(lambda: _is(status(before), "delivered"), 3, "the first delivery to be recorded")

        outage = _Counter()
        webhook_log.addHandler(outage)
        try:
            await asyncio.to_thread(pg.stop, "fast")
            await asyncio.sleep(1.0)
            assert not task.done(), f"the worker stopped when the database went away: {task!r}"
            await asyncio.to_thread(pg.start)
        finally:
            webhook_log.removeHandler(outage)
        # It backs off while the database is away instead of spinning on connection attempts.
        assert 1 <= outage.count <= 30, f"{outage.count} 'database unavailable' retries during a ~1-2 s outage"

        _, after = await enqueue(endpoint_id)
        await receiver.wait_for(2, timeout=15)
        assert [r.id for r in receiver.received] == [before, after]
        await until(lambda: _is(status(after), "delivered"), 3, "the second delivery to be recorded")
        assert not task.done()
        assert worker.delivered == 2
    finally:
        stop.set()
        try:
            if task is not None:
                await asyncio.wait_for(task, 10)
        finally:
            await receiver.stop()
            await asyncio.to_thread(pg.stop, "immediate")
            shutil.rmtree(tmp, ignore_errors=True)


class _Counter(logging.Handler):
    """Counts the worker's 'database unavailable' warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "database unavailable" in record.getMessage():
            self.count += 1


async def _is(value, expected) -> bool:
    return (await value) == expected
