"""One lock order (an endpoint before its deliveries), and endpoint changes racing with sends and consents.

The interleavings are reproduced with the project's own statements on two real connections: the
worker's failure recorder paused half-way, an operator's delete or disable in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from app.auth.deps import Principal
from app.webhooks import outbox, service
from app.webhooks.dispatcher import Result, Worker
from app.webhooks.schemas import EndpointUpdate
from tests.webhooks.receiver import Answer, Receiver


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def _principal(tenant: str) -> Principal:
    return Principal(tenant=tenant, sub="operator", scopes=frozenset({"webhooks:admin"}))


async def _endpoint(db: asyncpg.Connection, tenant: str) -> uuid.UUID:
    return await db.fetchval(
        "INSERT INTO webhook_endpoints (tenant_id, url, secret, kinds) VALUES ($1, 'http://127.0.0.1:9/hooks', "
        "'whsec_dGVzdA==', '{}') RETURNING id", tenant)


async def _queue(db: asyncpg.Connection, tenant: str, endpoint_id: uuid.UUID, subject_id: uuid.UUID,
                 seq: int) -> uuid.UUID:
    message_id = await db.fetchval(
        "INSERT INTO webhook_messages (tenant_id, type, body) VALUES ($1, 'consent.withdrawn', '{}') RETURNING id",
        tenant)
    return await db.fetchval(
        "INSERT INTO webhook_deliveries (tenant_id, message_id, endpoint_id, subject_id, seq) "
        "VALUES ($1, $2, $3, $4, $5) RETURNING id", tenant, message_id, endpoint_id, subject_id, seq)


class Paused:
    """A connection that stops after its `after`-th statement until `go` is set."""

    def __init__(self, conn: asyncpg.Connection, after: int) -> None:
        self._conn, self._after, self.calls = conn, after, 0
        self.reached, self.go = asyncio.Event(), asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def _run(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = await getattr(self._conn, method)(*args, **kwargs)
        self.calls += 1
        if self.calls == self._after:
            self.reached.set()
            await self.go.wait()
        return result

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        return await self._run("execute", *args, **kwargs)

    async def executemany(self, *args: Any, **kwargs: Any) -> Any:
        return await self._run("executemany", *args, **kwargs)

    async def fetch(self, *args: Any, **kwargs: Any) -> Any:
        return await self._run("fetch", *args, **kwargs)

    async def fetchrow(self, *args: Any, **kwargs: Any) -> Any:
        return await self._run("fetchrow", *args, **kwargs)

    async def fetchval(self, *args: Any, **kwargs: Any) -> Any:
        return await self._run("fetchval", *args, **kwargs)


class OnePool:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @contextlib.asynccontextmanager
    async def acquire(self, timeout: float | None = None):
        yield self.conn


@pytest.mark.parametrize("action", ["delete", "disable"])
async def test_recording_a_failure_while_an_operator_changes_the_endpoint_never_deadlocks(
        settings, database_url, tenant, db, action):
    endpoint_id = await _endpoint(db, tenant)
    subject = uuid.uuid4()
    first = await _queue(db, tenant, endpoint_id, subject, 1)
    await _queue(db, tenant, endpoint_id, subject, 2)  # a later change of the same person, waiting behind it
    token = uuid.uuid4()
    delivery = await db.fetchrow(  # what a claim hands the sender
        """UPDATE webhook_deliveries d SET lease_token = $2, next_attempt_at = now() + interval '60 s'
           FROM webhook_messages m WHERE d.id = $1 AND m.id = d.message_id
           RETURNING d.id, d.tenant_id, d.endpoint_id, d.subject_id, d.seq, d.attempts, d.message_id, m.type""",
        first, token)
    worker = Worker(settings, name="lock-order")
    recorder, operator = await asyncpg.connect(_plain(database_url)), await asyncpg.connect(_plain(database_url))
    try:
        paused = Paused(recorder, after=2)  # the failure recorder stops once it holds its first locks
        worker.pool = OnePool(paused)
        failed = Result(attempted_at=datetime.now(UTC), status_code=500, latency_ms=1.0, response_body="no")
        recording = asyncio.create_task(worker._record(delivery, token, failed))
        await asyncio.wait_for(paused.reached.wait(), 5)

        async def operate() -> None:
            async with operator.transaction():
                if action == "delete":
                    await service.delete_endpoint(operator, _principal(tenant), endpoint_id)
                else:
                    await service.update_endpoint(operator, _principal(tenant), endpoint_id,
                                                  EndpointUpdate(enabled=False))

        operating = asyncio.create_task(operate())
        await asyncio.sleep(0.3)  # the operator now waits for the recorder (or, on a bad order, holds what it needs)
        paused.go.set()
        results = await asyncio.wait_for(asyncio.gather(recording, operating, return_exceptions=True), 15)
        assert [r for r in results if isinstance(r, BaseException)] == []
    finally:
        await recorder.close()
        await operator.close()

    rows = await db.fetch("SELECT status, attempts, last_error, next_attempt_at = 'infinity' AS paused "
                          "FROM webhook_deliveries WHERE endpoint_id = $1 ORDER BY seq", endpoint_id)
    assert rows[0]["attempts"] == 1  # the failed attempt was recorded
    if action == "delete":
        assert [(r["status"], r["last_error"]) for r in rows] == [("failed", "endpoint deleted")] * 2
    else:
        assert [(r["status"], r["paused"]) for r in rows] == [("pending", True)] * 2


@pytest.mark.parametrize("answer", [500, 200], ids=["fails", "succeeds"])
async def test_a_send_in_flight_when_its_endpoint_is_deleted_ends_failed(client, auth, tenant, register, start_worker,
                                                                        db, answer):
    """Whatever the receiver answers after the delete, the delivery stays failed ('endpoint deleted')."""
    arrived = asyncio.Event()

    def hold_then_fail(_item) -> Answer:
        arrived.set()
        return Answer(answer, delay=0.5)

    rcv = await Receiver(hold_then_fail).start()
    try:
        endpoint = await register(rcv)
        start_worker()
        headers = auth(tenant, "webhooks:admin")
        queued = (await client.post(f"/v1/webhook-endpoints/{endpoint['id']}/test", headers=headers)).json()
        await asyncio.wait_for(arrived.wait(), 5)
        assert (await client.delete(f"/v1/webhook-endpoints/{endpoint['id']}", headers=headers)).status_code == 204

        delivery_id = uuid.UUID(queued["delivery_id"])
        for _ in range(100):  # the worker records the 500 after the delete
            if await db.fetchval("SELECT count(*) FROM webhook_attempts WHERE delivery_id = $1", delivery_id):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # longer than the first retry delay (0.2 s)
        row = await db.fetchrow("SELECT status, last_error, lease_token FROM webhook_deliveries WHERE id = $1",
                                delivery_id)
        assert row["status"] == "failed", dict(row)
        assert await db.fetchval("SELECT count(*) FROM webhook_attempts WHERE delivery_id = $1", delivery_id) == 1
    finally:
        await rcv.stop()


def _event(purpose_id: uuid.UUID) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"id": uuid.uuid4(), "seq": 1, "action": "withdrawn", "status": "withdrawn", "previous_status": "granted",
            "version": 2, "purpose_id": purpose_id, "purpose": "marketing-sms", "occurred_at": now, "recorded_at": now}


@pytest.mark.parametrize("action", ["disable", "delete"])
@pytest.mark.parametrize("first", ["consent", "operator"])
async def test_a_consent_committed_while_its_endpoint_is_switched_off_is_never_due(database_url, tenant, db,
                                                                                  action, first):
    endpoint_id = await _endpoint(db, tenant)
    purpose_id = uuid.uuid4()
    consent, operator = await asyncpg.connect(_plain(database_url)), await asyncpg.connect(_plain(database_url))
    try:
        consent_tx, operator_tx = consent.transaction(), operator.transaction()
        await consent_tx.start()
        await operator_tx.start()

        async def enqueue() -> None:
            await outbox.enqueue(consent, tenant=tenant, subject_ref="race-1", subject_id=uuid.uuid4(),
                                 events=[_event(purpose_id)], purposes={"marketing-sms": ("marketing-sms", "marketing", "sms", "marketing", "consent")})

        async def switch_off() -> None:
            if action == "delete":
                await service.delete_endpoint(operator, _principal(tenant), endpoint_id)
            else:
                await service.update_endpoint(operator, _principal(tenant), endpoint_id, EndpointUpdate(enabled=False))

        if first == "consent":
            await enqueue()
            later = asyncio.create_task(switch_off())
            await asyncio.sleep(0.3)
            await consent_tx.commit()
            await asyncio.wait_for(later, 5)
            await operator_tx.commit()
        else:
            await switch_off()
            later = asyncio.create_task(enqueue())
            await asyncio.sleep(0.3)
            await operator_tx.commit()
            await asyncio.wait_for(later, 5)
            await consent_tx.commit()
    finally:
        await consent.close()
        await operator.close()

    rows = await db.fetch("SELECT status, next_attempt_at = 'infinity' AS paused FROM webhook_deliveries "
                          "WHERE endpoint_id = $1", endpoint_id)
    for row in rows:  # nothing is ever due for an endpoint switched off
        if action == "delete":
            assert row["status"] == "failed", dict(row)
        else:
            assert row["status"] == "pending" and row["paused"], dict(row)
    # a disabled endpoint keeps its messages, paused; a deleted one gets none once its deletion committed
    assert len(rows) == (0 if (action, first) == ("delete", "operator") else 1), [dict(r) for r in rows]


async def test_a_deleted_endpoints_delivery_cannot_be_retried_into_a_wait_without_end(client, auth, tenant, register,
                                                                                    receiver, db):
    headers = auth(tenant, "webhooks:admin")
    endpoint = await register(receiver)
    queued = (await client.post(f"/v1/webhook-endpoints/{endpoint['id']}/test", headers=headers)).json()
    assert (await client.delete(f"/v1/webhook-endpoints/{endpoint['id']}", headers=headers)).status_code == 204
    response = await client.post(f"/v1/webhook-deliveries/{queued['delivery_id']}/retry", headers=headers)
    assert response.status_code == 409, response.text
    assert await db.fetchval("SELECT status FROM webhook_deliveries WHERE id = $1::uuid",
                             queued["delivery_id"]) == "failed"


class PausedAt(Paused):
    """Stops right after the first statement whose text contains `marker`."""

    def __init__(self, conn: asyncpg.Connection, marker: str) -> None:
        super().__init__(conn, after=0)
        self._marker = marker

    async def _run(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = await getattr(self._conn, method)(*args, **kwargs)
        if not self.reached.is_set() and args and self._marker in str(args[0]):
            self.reached.set()
            await self.go.wait()
        return result


async def test_a_retry_racing_a_disable_never_deadlocks_and_ends_paused(database_url, tenant, db):
    """The retry locks the endpoint before the deliveries it requeues, as the disable does: without
    that, retry (delivery, then its successors) and disable (successors, then the delivery) deadlock."""
    endpoint_id = await _endpoint(db, tenant)
    subject = uuid.uuid4()
    second = await _queue(db, tenant, endpoint_id, subject, 2)  # stored first, so the disable's pause meets it first
    first = await _queue(db, tenant, endpoint_id, subject, 1)
    await db.execute("UPDATE webhook_deliveries SET next_attempt_at = now() + interval '1 hour' WHERE id = ANY($1)",
                     [second, first])  # the first in backoff, the second waiting with it
    retrier, operator = await asyncpg.connect(_plain(database_url)), await asyncpg.connect(_plain(database_url))
    try:
        paused = PausedAt(retrier, "FOR UPDATE OF d")  # the retry holds the delivery it retries

        async def retry() -> None:
            async with retrier.transaction():
                await service.retry_delivery(paused, _principal(tenant), first)

        async def disable() -> None:
            async with operator.transaction():
                await service.update_endpoint(operator, _principal(tenant), endpoint_id, EndpointUpdate(enabled=False))

        retrying = asyncio.create_task(retry())
        await asyncio.wait_for(paused.reached.wait(), 5)
        disabling = asyncio.create_task(disable())
        await asyncio.sleep(0.3)
        paused.go.set()
        results = await asyncio.wait_for(asyncio.gather(retrying, disabling, return_exceptions=True), 15)
        assert [r for r in results if isinstance(r, BaseException)] == []
    finally:
        await retrier.close()
        await operator.close()
    rows = await db.fetch("SELECT status, next_attempt_at = 'infinity' AS paused FROM webhook_deliveries "
                          "WHERE endpoint_id = $1 ORDER BY seq", endpoint_id)
    assert [(r["status"], r["paused"]) for r in rows] == [("pending", True)] * 2
