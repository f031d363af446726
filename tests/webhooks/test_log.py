"""The delivery log and replay: listing with filters and cursor, one message's deliveries, retry, recover."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from tests.helpers import sign_up
from tests.webhooks.receiver import Answer, Receiver

pytestmark = pytest.mark.usefixtures("demo")


async def _wait_status(db, endpoint_id: str, status: str, count: int, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1::uuid AND status = $2",
                            endpoint_id, status) < count:
        assert time.monotonic() < deadline, f"fewer than {count} {status} deliveries"
        await asyncio.sleep(0.1)


async def test_listing_filters_and_cursor_pagination(client, auth, tenant, receiver, register, worker, db):
    endpoint = await register(receiver, channels=["sms"], purposes=["marketing-sms"])
    headers, admin = auth(tenant), auth(tenant, "webhooks:admin")
    for i in range(3):
        await sign_up(client, headers, f"p-{i}", {"marketing-sms"})
    await client.post("/v1/subjects/p-1/consents/marketing-sms/withdraw", json={}, headers=headers)
    await receiver.wait_for(4)
    await _wait_status(db, endpoint["id"], "delivered", 4)

    url = f"/v1/webhook-endpoints/{endpoint['id']}/deliveries"
    seen, cursor = [], None
    while True:
        page = (await client.get(url, params={"limit": 3, **({"cursor": cursor} if cursor else {})},
                                 headers=admin)).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 4 and len({d["id"] for d in seen}) == 4
    assert [d["created_at"] for d in seen] == sorted((d["created_at"] for d in seen), reverse=True)
    assert all(d["status"] == "delivered" and d["attempts"] == 1 for d in seen)

    only = (await client.get(url, params={"type": "consent.withdrawn"}, headers=admin)).json()["items"]
    assert [(d["subject_id"], d["type"]) for d in only] == [("p-1", "consent.withdrawn")]
    by_subject = (await client.get(url, params={"subject_id": "p-1"}, headers=admin)).json()["items"]
    assert len(by_subject) == 2
    assert (await client.get(url, params={"status": "failed"}, headers=admin)).json()["items"] == []
    future = (await client.get(url, params={"since": "2999-01-01T00:00:00Z"}, headers=admin)).json()
    assert future["items"] == []
    bad = await client.get(url, params={"cursor": "garbage"}, headers=admin)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query.cursor"

    message = (await client.get(f"/v1/webhook-messages/{only[0]['message_id']}", headers=admin)).json()
    assert message["payload"]["type"] == "consent.withdrawn" and message["subject_id"] == "p-1"
    assert [d["endpoint_id"] for d in message["deliveries"]] == [endpoint["id"]]


async def test_retry_one_dead_letter_and_recover_since(client, auth, tenant, register, start_worker, db):
    healthy = False
    rcv = await Receiver(lambda _: Answer(200 if healthy else 500)).start()
    try:
        start_worker(webhook_retry_schedule=(0,))  # one attempt, then a dead letter
        endpoint = await register(rcv, channels=["sms"], purposes=["marketing-sms"])
        headers, admin = auth(tenant), auth(tenant, "webhooks:admin")
        await sign_up(client, headers, "r-old", {"marketing-sms"})
        await _wait_status(db, endpoint["id"], "failed", 1)
        cutoff = datetime.now(UTC)
        await asyncio.sleep(0.05)
        for subject in ("r-1", "r-2"):
            await sign_up(client, headers, subject, {"marketing-sms"})
        await _wait_status(db, endpoint["id"], "failed", 3)

        healthy = True
        url = f"/v1/webhook-endpoints/{endpoint['id']}"
        failed = (await client.get(f"{url}/deliveries", params={"status": "failed"}, headers=admin)).json()["items"]
        old = next(d for d in failed if d["subject_id"] == "r-old")
        recovered = await client.post(f"{url}/recover", json={"since": cutoff.isoformat()}, headers=admin)
        assert recovered.status_code == 202 and recovered.json()["requeued"] == 2
        await _wait_status(db, endpoint["id"], "delivered", 2)
        assert {r.json["data"]["subject_id"] for r in rcv.received if r.received_at > cutoff.timestamp()} >= {
            "r-1", "r-2"}
        still = (await client.get(f"/v1/webhook-deliveries/{old['id']}", headers=admin)).json()
        assert still["status"] == "failed"

        retried = await client.post(f"/v1/webhook-deliveries/{old['id']}/retry", headers=admin)
        assert retried.status_code == 202
        await _wait_status(db, endpoint["id"], "delivered", 3)
        final = (await client.get(f"/v1/webhook-deliveries/{old['id']}", headers=admin)).json()
        # a replay starts a fresh round of the schedule; the log keeps every try
        assert final["attempts"] == 1 and [a["status_code"] for a in final["attempts_log"]] == [500, 200]
        ids = [r.id for r in rcv.received if r.json["data"]["subject_id"] == "r-old"]
        assert len(ids) == 2 and ids[0] == ids[1]  # the replay carries the same webhook-id

        none = await client.post(f"{url}/recover", json={"since": cutoff.isoformat()}, headers=admin)
        assert none.json()["requeued"] == 0
        invalid = await client.post(f"{url}/recover", json={"since": "2026-11-22T10:00:00"}, headers=admin)
        assert invalid.status_code == 422 and invalid.json()["errors"][0]["field"] == "body.since"
    finally:
        await rcv.stop()


async def test_send_a_test_event(client, auth, tenant, receiver, register, worker):
    endpoint = await register(receiver)
    queued = await client.post(f"/v1/webhook-endpoints/{endpoint['id']}/test", headers=auth(tenant, "webhooks:admin"))
    assert queued.status_code == 202
    (got,) = await receiver.wait_for(1)
    assert got.json["type"] == "webhook.test" and got.id == queued.json()["message_id"]
    assert got.json["data"]["tenant"] == tenant
