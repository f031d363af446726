"""One bad receiver never delays anyone else: not through the claim, the connection pools or DNS.

Real receivers on 127.0.0.1 and an in-process worker with the default timeouts, send slots and
per-endpoint cap; endpoints and backlogs are written with SQL (the API path is covered elsewhere).
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import asyncpg
import pytest

from app.core.settings import Settings
from app.webhooks.signing import new_secret
from tests.webhooks.receiver import Answer, Receiver

DEFAULTS = Settings()
DEFAULT_TIMING = {name: getattr(DEFAULTS, f"webhook_{name}") for name in (
    "timeout_seconds", "connect_timeout_seconds", "lease_seconds", "poll_seconds", "concurrency",
    "max_in_flight_per_endpoint", "retry_schedule")}
START = {f"webhook_{name}": value for name, value in DEFAULT_TIMING.items()}


async def _endpoint(db: asyncpg.Connection, tenant: str, url: str, *receivers: Receiver) -> uuid.UUID:
    secret = new_secret()
    for r in receivers:
        r.secrets.append(secret)
    return await db.fetchval(
        "INSERT INTO webhook_endpoints (tenant_id, url, secret, kinds) VALUES ($1, $2, $3, '{}') RETURNING id",
        tenant, url, secret)


async def _backlog(db: asyncpg.Connection, tenant: str, endpoint_id: uuid.UUID, n: int) -> None:
    """`n` independent deliveries, due for a minute already (older than anything sent later)."""
    await db.execute(
        """WITH m AS (
               INSERT INTO webhook_messages (tenant_id, type, body, created_at)
               SELECT $1, 'consent.withdrawn', '{"n": ' || g || '}', now() - interval '1 minute'
               FROM generate_series(1, $3) g RETURNING id)
           INSERT INTO webhook_deliveries (tenant_id, message_id, endpoint_id, next_attempt_at)
           SELECT $1, id, $2, now() - interval '1 minute' FROM m""", tenant, endpoint_id, n)


async def _stream(db: asyncpg.Connection, tenant: str, endpoints: list[uuid.UUID], n: int, rate: float) -> None:
    """`n` messages, one transaction each (the commit wakes the worker), each to every endpoint."""
    started = time.monotonic()
    for i in range(n):
        async with db.transaction():
            message_id = await db.fetchval(
                "INSERT INTO webhook_messages (tenant_id, type, body, created_at) "
                "VALUES ($1, 'consent.withdrawn', $2, clock_timestamp()) RETURNING id", tenant, f'{{"i": {i}}}')
            await db.executemany("INSERT INTO webhook_deliveries (tenant_id, message_id, endpoint_id) "
                                 "VALUES ($1, $2, $3)", [(tenant, message_id, e) for e in endpoints])
        await asyncio.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))


async def _latencies(db: asyncpg.Connection, received: list, path: str) -> list[float]:
    """Commit-to-receipt seconds per message (first receipt), for requests on `path`."""
    firsts: dict[str, float] = {}
    for r in received:
        if r.path == path:
            firsts.setdefault(r.id, r.received_at)
    created = {str(row["id"]): row["at"] for row in await db.fetch(
        "SELECT id, extract(epoch FROM created_at)::float8 AS at FROM webhook_messages WHERE id = ANY($1::uuid[])",
        list(firsts))}
    return sorted(firsts[m] - created[m] for m in firsts)


def _p99(values: list[float]) -> float:
    return values[min(len(values) - 1, int(len(values) * 0.99))]


async def test_a_hanging_endpoint_with_a_big_backlog_delays_no_one(tenant, db, start_worker):
    hanging_calls = 0

    def shared(item) -> Answer:
        nonlocal hanging_calls
        if item.path == "/hang":
            hanging_calls += 1
            return Answer(delay=60)  # longer than the 15 s send timeout
        return Answer()

    shared_host, other_host = await Receiver(shared).start(), await Receiver().start()
    try:
        hanging = await _endpoint(db, tenant, f"http://127.0.0.1:{shared_host.port}/hang", shared_host)
        same_origin = await _endpoint(db, tenant, f"http://127.0.0.1:{shared_host.port}/other", shared_host)
        elsewhere = await _endpoint(db, tenant, other_host.url, other_host)
        await _backlog(db, tenant, hanging, 1000)
        start_worker(**START)
        cap = DEFAULTS.webhook_max_in_flight_per_endpoint
        for _ in range(100):
            if hanging_calls >= cap:
                break
            await asyncio.sleep(0.05)
        assert hanging_calls == cap  # the hanging endpoint holds all the slots it may have

        await _stream(db, tenant, [same_origin, elsewhere], 300, rate=150)
        await other_host.wait_for(300, timeout=15)
        for _ in range(300):
            if sum(r.path == "/other" for r in shared_host.received) >= 300:
                break
            await asyncio.sleep(0.05)
        for receiver, path in ((other_host, "/hooks"), (shared_host, "/other")):
            latencies = await _latencies(db, receiver.received, path)
            assert len(latencies) == 300, path
            assert _p99(latencies) < 2.0, (path, latencies[-5:])
        assert hanging_calls == cap  # still hanging: nothing above was waiting for it to end
    finally:
        await shared_host.stop()
        await other_host.stop()
        await db.execute("UPDATE webhook_deliveries SET status = 'failed' WHERE tenant_id = $1 AND status = 'pending'",
                         tenant)


@pytest.fixture
def slow_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """slow.test answers after 3 s, fast.test at once (both 127.0.0.1); any other name as usual."""
    real, lookups = socket.getaddrinfo, []

    def getaddrinfo(host, port, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name in ("slow.test", "fast.test"):
            lookups.append(name)
            if name == "slow.test":
                time.sleep(3)
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


async def test_a_slow_dns_name_does_not_stall_sends_to_other_names(tenant, db, start_worker, slow_dns):
    slow, fast = await Receiver().start(), await Receiver().start()
    try:
        slow_id = await _endpoint(db, tenant, f"http://slow.test:{slow.port}/hooks", slow)
        fast_id = await _endpoint(db, tenant, f"http://fast.test:{fast.port}/hooks", fast)
        start_worker(webhook_allowed_hosts=("127.0.0.1", "slow.test", "fast.test"), webhook_timeout_seconds=1.0)
        await _backlog(db, tenant, slow_id, 40)
        await asyncio.sleep(0.3)  # the slow name's sends are all waiting on DNS now
        await _stream(db, tenant, [fast_id], 20, rate=100)
        await fast.wait_for(20, timeout=5)
        latencies = await _latencies(db, fast.received, "/hooks")
        assert max(latencies) < 1.0, latencies[-5:]
        # one lookup of the slow name at a time, however many sends wait on it
        assert 1 <= slow_dns.count("slow.test") <= 2, slow_dns.count("slow.test")
    finally:
        await slow.stop()
        await fast.stop()
        await db.execute("UPDATE webhook_deliveries SET status = 'failed' WHERE tenant_id = $1 AND status = 'pending'",
                         tenant)

