"""The worker outlives its database: ten fast PostgreSQL restarts under load, one worker process,
every committed message delivered, verified and in per-subject order.

A PostgreSQL of its own (restarting it cannot disturb the shared test database), the real
`python -m app.cli worker` command, and consents enqueued continually by the outbox's own
statement while the database is up.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from app.cli import migrate
from app.core.embedded_pg import EmbeddedPostgres, free_port
from app.webhooks import outbox
from app.webhooks.signing import new_secret
from tests.webhooks.receiver import Receiver
from tests.webhooks.test_faults import WorkerProcess, first_receipts, until

RESTARTS = 10
LANES = 4  # concurrent writers (~30 consents/s each): the worker is claiming and recording when the database goes
PURPOSE = uuid.uuid4()
PATHS = ("/hooks", "/hooks-2")


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def _event(seq: int) -> dict:
    now = datetime.now(UTC)
    return {"id": uuid.uuid4(), "seq": seq, "action": "withdrawn", "status": "withdrawn",
            "previous_status": "granted", "version": seq, "purpose_id": PURPOSE, "purpose": "marketing-sms",
            "occurred_at": now, "recorded_at": now}


def _arrived(receiver: Receiver, path: str) -> set[str]:
    return {r.id for r in receiver.received if r.path == path}


@pytest.fixture
async def own_postgres():
    tmp = Path(tempfile.mkdtemp(prefix="cl-outage-pg-"))
    pg = EmbeddedPostgres(tmp / "pg", free_port(), fast_unsafe=True, database="consent_ledger")
    try:
        await asyncio.to_thread(pg.start)
        owner_url, _ = await asyncio.to_thread(pg.ensure_roles, pg.database)
        await asyncio.to_thread(migrate, owner_url, "consent_ledger_runtime")
        yield pg
    finally:
        await asyncio.to_thread(pg.stop, "immediate")
        shutil.rmtree(tmp, ignore_errors=True)


async def test_one_worker_process_delivers_everything_through_ten_fast_database_restarts(own_postgres):
    pg = own_postgres
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    receiver = await Receiver().start()
    secret = new_secret()
    receiver.secrets.append(secret)
    setup = await asyncpg.connect(_plain(pg.url))
    for path in PATHS:  # every message goes to two endpoints
        await setup.execute("INSERT INTO webhook_endpoints (tenant_id, url, secret, kinds) VALUES ($1, $2, $3, '{}')",
                            tenant, receiver.url.replace("/hooks", path), secret)
    await setup.close()
    process = WorkerProcess(pg.url, WEBHOOK_RETRY_SCHEDULE="0,0.2,0.5,1,1,1,1,1,1,1,1,1")
    subjects = [(f"outage-{i}", uuid.uuid4()) for i in range(64)]
    seqs = itertools.count(1)  # never reused, so an ambiguous commit cannot tie two messages
    stop_load = asyncio.Event()

    async def load(lane: int) -> None:
        """One writer; its subjects are its own, so each subject's seq follows its commit order."""
        conn = None
        for ref, subject_id in itertools.cycle(subjects[lane::LANES]):
            if stop_load.is_set():
                break
            try:
                if conn is None:
                    conn = await asyncpg.connect(_plain(pg.url), timeout=2)
                async with conn.transaction():
                    await outbox.enqueue(conn, tenant=tenant, subject_ref=ref, subject_id=subject_id,
                                         events=[_event(next(seqs))],
                                         purposes={"marketing-sms": ("marketing-sms", "marketing", "sms", "marketing", "consent")})
            except Exception:  # noqa: BLE001 - the database is restarting; the ledger would answer 503
                if conn is not None:
                    conn.terminate()
                conn = None
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.03)
        if conn is not None:
            await conn.close()

    loader = None
    try:
        await process.started()
        loader = asyncio.gather(*(load(lane) for lane in range(LANES)))
        for _ in range(RESTARTS):
            await asyncio.sleep(0.8)
            await asyncio.to_thread(pg.stop, "fast")
            await asyncio.to_thread(pg.start)
            assert process.proc.poll() is None, f"the worker exited:\n{process.output[-3000:]}"
        await asyncio.sleep(0.5)
        stop_load.set()
        await asyncio.wait_for(loader, 10)

        db = await asyncpg.connect(_plain(pg.url))
        try:
            rows = await db.fetch(
                """SELECT m.id::text AS id, m.subject_ref, max(d.seq) AS seq FROM webhook_messages m
                   JOIN webhook_deliveries d ON d.message_id = m.id WHERE m.tenant_id = $1
                   GROUP BY m.id""", tenant)
            assert len(rows) > 200, len(rows)  # there was load around every restart
            expected = {r["id"] for r in rows}
            try:
                await until(lambda: all(_arrived(receiver, path) >= expected for path in PATHS), 30,
                            "every committed message to arrive at both endpoints", interval=0.2)
            except AssertionError:  # say where the missing ones are stuck
                missing = (expected - _arrived(receiver, PATHS[0])) | (expected - _arrived(receiver, PATHS[1]))
                states = await db.fetch(
                    "SELECT status, attempts, lease_token IS NOT NULL AS leased, next_attempt_at - now() AS due_in "
                    "FROM webhook_deliveries WHERE message_id = ANY($1::uuid[]) LIMIT 4", list(missing))
                heads = await db.fetch(
                    "SELECT DISTINCT ON (d.endpoint_id, d.subject_id) d.seq, d.status, d.attempts, "
                    "d.lease_token IS NOT NULL AS leased, d.next_attempt_at - now() AS due_in FROM webhook_deliveries d "
                    "WHERE d.status = 'pending' ORDER BY d.endpoint_id, d.subject_id, d.seq")
                activity = await db.fetch("SELECT application_name, state, wait_event, left(query, 40) AS query "
                                          "FROM pg_stat_activity WHERE backend_type = 'client backend'")
                tried = await db.fetch(
                    "SELECT a.status_code, a.error, a.attempted_at FROM webhook_attempts a JOIN webhook_deliveries d "
                    "ON d.id = a.delivery_id WHERE d.message_id = ANY($1::uuid[]) LIMIT 6", list(missing))
                raise AssertionError(f"{len(missing)} missing, e.g. {[dict(r) for r in states]}; queue heads "
                                     f"{[dict(r) for r in heads]}; attempts {[dict(r) for r in tried]}; unverified "
                                     f"{len(receiver.unverified)}; received {len(receiver.received)}; sessions "
                                     f"sessions {[dict(r) for r in activity]}\n{process.output[-3000:]}") from None
        finally:
            await db.close()
        assert receiver.unverified == []
        assert process.proc.poll() is None, process.output[-3000:]  # the same worker process did all of it
        assert "database unavailable" in process.output  # it did see the outages

        order = defaultdict(list)
        for r in sorted(rows, key=lambda r: r["seq"]):
            order[r["subject_ref"]].append(r["id"])
        for path in PATHS:
            firsts = first_receipts([r for r in receiver.received if r.path == path])
            for ref, ids in order.items():
                got = [r.id for r in firsts if r.json["data"]["subject_id"] == ref]
                assert got == ids, f"{path} {ref}: received out of ledger order"
    finally:
        stop_load.set()
        if loader is not None and not loader.done():
            loader.cancel()
        process.cleanup()
        await receiver.stop()


async def test_no_round_ends_the_worker_whatever_it_raises(settings, monkeypatch):
    """Not only a lost database: any error in a round is logged and backed off, never fatal."""
    from app.webhooks.dispatcher import Worker

    calls = 0
    real = Worker._step

    async def flaky(self):
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError("a bug in one round")
        return await real(self)

    monkeypatch.setattr(Worker, "_step", flaky)
    worker = Worker(settings, name="flaky")
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await until(lambda: calls >= 3 or task.done(), 5, "a third round after two failed ones")
        assert not task.done(), task
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
