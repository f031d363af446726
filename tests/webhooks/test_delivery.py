"""End to end over the wire: consent change -> outbox -> worker -> signed POST -> receiver."""

from __future__ import annotations

import pytest

from tests.helpers import sign_up

pytestmark = pytest.mark.usefixtures("demo")


async def test_withdrawal_reaches_the_sms_sender_signed_and_thin(client, auth, tenant, receiver, register, worker):
    await register(receiver, kinds=["marketing"], channels=["sms"], description="alimi SMS sender")
    headers = auth(tenant)
    assert (await sign_up(client, headers, "member-1", {"marketing", "marketing-sms"})).status_code == 201
    response = await client.post("/v1/subjects/member-1/consents/marketing-sms/withdraw", json={}, headers=headers)
    assert response.status_code == 200, response.text

    received = await receiver.wait_for(4)  # sign-up: marketing, marketing-sms, marketing-night; then the withdrawal
    assert sorted(r.json["data"]["purpose"] for r in received[:3]) == ["marketing", "marketing-night",
                                                                        "marketing-sms"]
    granted = next(r for r in received[:3] if r.json["data"]["purpose"] == "marketing-sms")
    withdrawn = received[3]
    assert granted.json["type"] == "consent.granted"
    assert withdrawn.json["type"] == "consent.withdrawn"
    data = withdrawn.json["data"]
    event = response.json()["results"][0]["event"]
    assert data == {
        "tenant": tenant, "subject_id": "member-1", "purpose": "marketing-sms", "channel": "sms",
        "category": "marketing", "legal_basis": "consent", "status": "withdrawn", "previous_status": "granted", "version": 2, "event_id": event["id"],
        "occurred_at": data["occurred_at"],
        "duties": data["duties"],
    }
    # the duties the withdrawal opened (docs/duties.md): its 14-day result notice and the destruction
    # of the purpose's data; no processor owns this endpoint, so no suppression is asked of one
    assert [(d["kind"], d["processor"]) for d in data["duties"]] == [("ad_result_notice", None),
                                                                      ("destruction", None)]
    assert set(withdrawn.json) == {"type", "timestamp", "data"}
    assert withdrawn.headers["webhook-signature"].startswith("v1,")
    assert granted.id != withdrawn.id


async def test_two_hostnames_on_one_address_never_share_a_connection(client, auth, tenant, receiver, register,
                                                                     start_worker, db):
    """The worker connects to the checked IP; keep-alive connections must still belong to one hostname."""
    start_worker(webhook_allowed_hosts=("127.0.0.1", "localhost"))
    by_ip = await register(receiver)
    # The API's allow-list (127.0.0.1 only) would refuse the name, so the second endpoint goes in by SQL.
    by_name = await db.fetchval(
        "INSERT INTO webhook_endpoints (tenant_id, url, secret) VALUES ($1, $2, $3) RETURNING id::text",
        tenant, f"http://localhost:{receiver.port}/hooks", by_ip["secret"])
    admin = auth(tenant, "webhooks:admin")
    for _ in range(3):
        for endpoint_id in (by_ip["id"], by_name):
            assert (await client.post(f"/v1/webhook-endpoints/{endpoint_id}/test", headers=admin)).status_code == 202
    received = await receiver.wait_for(6)
    hosts_by_connection: dict[int, set[str]] = {}
    for r in received:
        hosts_by_connection.setdefault(r.peer, set()).add(r.headers["host"])
    assert set().union(*hosts_by_connection.values()) == {f"127.0.0.1:{receiver.port}", f"localhost:{receiver.port}"}
    assert all(len(hosts) == 1 for hosts in hosts_by_connection.values()), hosts_by_connection


async def test_a_slow_backlog_snapshot_for_the_metrics_never_delays_a_delivery(client, auth, tenant, receiver,
                                                                                register, start_worker, monkeypatch):
    """The metrics' backlog query reads every pending delivery; with a large backlog it is slow, and
    it runs beside the claim loop, not in it."""
    import asyncio
    import time

    from app.webhooks.metrics import WorkerMetrics

    entered = asyncio.Event()

    async def slow_refresh(self, conn) -> None:  # the query, as slow as a large backlog makes it
        entered.set()
        await conn.execute("SELECT pg_sleep(5)")

    monkeypatch.setattr(WorkerMetrics, "refresh", slow_refresh)
    endpoint = await register(receiver)
    running = start_worker(worker_metrics_interval_seconds=10)  # its time limit (10 s) outlasts the query
    await asyncio.wait_for(entered.wait(), 2)  # the worker's first round has started its snapshot
    started = time.monotonic()
    assert (await client.post(f"/v1/webhook-endpoints/{endpoint['id']}/test",
                              headers=auth(tenant, "webhooks:admin"))).status_code == 202
    await receiver.wait_for(1, timeout=4)
    assert time.monotonic() - started < 1.5
    assert not running.task.done()
