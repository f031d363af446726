"""Retries: 2xx only, no redirects, Retry-After, 410, dead letters, disabling, SSRF at send time."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from tests.webhooks.receiver import Answer, Receiver


async def _test_event(client, auth, tenant, endpoint) -> dict:
    response = await client.post(f"/v1/webhook-endpoints/{endpoint['id']}/test", headers=auth(tenant, "webhooks:admin"))
    assert response.status_code == 202, response.text
    return response.json()


async def _delivery(client, auth, tenant, delivery_id: str) -> dict:
    response = await client.get(f"/v1/webhook-deliveries/{delivery_id}", headers=auth(tenant, "webhooks:admin"))
    assert response.status_code == 200, response.text
    return response.json()


async def _until(predicate, timeout: float = 8.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


def _answers(*answers: Answer):
    queue = list(answers)
    return lambda _: queue.pop(0) if len(queue) > 1 else queue[0]


async def test_redirects_are_failures_and_not_followed(client, auth, tenant, register, worker):
    elsewhere = await Receiver().start()
    rcv = await Receiver(_answers(Answer(302, {"location": elsewhere.url}), Answer(200))).start()
    try:
        queued = await _test_event(client, auth, tenant, await register(rcv))
        first, second = await rcv.wait_for(2)
        assert first.id == second.id  # same webhook-id on the retry
        assert elsewhere.received == [] and elsewhere.unverified == []
        delivery = await _until(lambda: _done(client, auth, tenant, queued["delivery_id"]))
        assert delivery["status"] == "delivered" and delivery["attempts"] == 2
        assert [a["status_code"] for a in delivery["attempts_log"]] == [302, 200]
    finally:
        await rcv.stop()
        await elsewhere.stop()


async def _done(client, auth, tenant, delivery_id):
    d = await _delivery(client, auth, tenant, delivery_id)
    return d if d["status"] != "pending" else None


async def test_retry_after_is_honoured(client, auth, tenant, register, worker):
    rcv = await Receiver(_answers(Answer(503, {"retry-after": "1"}), Answer(200))).start()
    try:
        await _test_event(client, auth, tenant, await register(rcv))
        first, second = await rcv.wait_for(2, timeout=6)
        # the schedule alone would retry after 0.2 s
        assert second.received_at - first.received_at >= 0.95
    finally:
        await rcv.stop()


async def test_dead_letter_after_the_last_attempt_with_every_attempt_logged(client, auth, tenant, register, worker,
                                                                            settings):
    rcv = await Receiver(lambda _: Answer(500, body=b"x" * 5000)).start()
    try:
        queued = await _test_event(client, auth, tenant, await register(rcv))
        delivery = await _until(lambda: _done(client, auth, tenant, queued["delivery_id"]))
        attempts = len(settings.webhook_retry_schedule)
        assert delivery["status"] == "failed" and delivery["failed_at"] and delivery["attempts"] == attempts
        assert delivery["next_attempt_at"] is None and delivery["last_status_code"] == 500
        log = delivery["attempts_log"]
        assert len(log) == attempts and len(rcv.received) == attempts
        for attempt in log:
            assert attempt["status_code"] == 500 and attempt["latency_ms"] >= 0
            assert attempt["response_body"] == "x" * 1024 and attempt["worker"] == "test-worker"
        gaps = [b.received_at - a.received_at for a, b in zip(rcv.received, rcv.received[1:])]
        assert all(g >= 0.15 for g in gaps), gaps  # the (shortened) schedule with jitter, not a hot loop
    finally:
        await rcv.stop()


async def test_410_disables_the_endpoint_visibly(client, auth, tenant, register, worker):
    rcv = await Receiver(lambda _: Answer(410)).start()
    try:
        endpoint = await register(rcv)
        queued = await _test_event(client, auth, tenant, endpoint)
        delivery = await _until(lambda: _done(client, auth, tenant, queued["delivery_id"]))
        assert delivery["status"] == "failed" and delivery["attempts"] == 1
        got = (await client.get(f"/v1/webhook-endpoints/{endpoint['id']}",
                                headers=auth(tenant, "webhooks:admin"))).json()
        assert got["enabled"] is False and "410" in got["disabled_reason"] and got["disabled_at"]
        # nothing more is sent to it; re-enabling clears the reason
        await _test_event(client, auth, tenant, endpoint)
        await asyncio.sleep(0.8)
        assert len(rcv.received) == 1
        enabled = await client.patch(f"/v1/webhook-endpoints/{endpoint['id']}", json={"enabled": True},
                                     headers=auth(tenant, "webhooks:admin"))
        assert enabled.json()["enabled"] is True and enabled.json()["disabled_reason"] is None
    finally:
        await rcv.stop()


async def test_an_endpoint_failing_continuously_is_disabled_and_says_so(client, auth, tenant, register,
                                                                       start_worker):
    start_worker(webhook_disable_after_seconds=0.5, webhook_retry_schedule=(0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2))
    rcv = await Receiver(lambda _: Answer(500)).start()
    try:
        endpoint = await register(rcv)
        await _test_event(client, auth, tenant, endpoint)

        async def disabled():
            got = (await client.get(f"/v1/webhook-endpoints/{endpoint['id']}",
                                    headers=auth(tenant, "webhooks:admin"))).json()
            return got if not got["enabled"] else None

        got = await _until(disabled)
        assert got["disabled_reason"].startswith("every delivery failed since") and got["failing_since"]
    finally:
        await rcv.stop()


async def test_success_clears_the_failure_streak(client, auth, tenant, register, worker):
    rcv = await Receiver(_answers(Answer(500), Answer(200))).start()
    try:
        endpoint = await register(rcv)
        queued = await _test_event(client, auth, tenant, endpoint)
        await _until(lambda: _done(client, auth, tenant, queued["delivery_id"]))
        got = (await client.get(f"/v1/webhook-endpoints/{endpoint['id']}",
                                headers=auth(tenant, "webhooks:admin"))).json()
        assert got["failing_since"] is None and got["enabled"] is True
    finally:
        await rcv.stop()


async def test_the_ssrf_guard_runs_again_at_send_time(client, auth, tenant, register, start_worker, receiver):
    """Registered while loopback was allowed; a worker whose allow-list no longer has it refuses to send."""
    start_worker(webhook_allowed_hosts=())
    queued = await _test_event(client, auth, tenant, await register(receiver))
    delivery = await _until(lambda: _done(client, auth, tenant, queued["delivery_id"]))
    assert delivery["status"] == "failed"
    assert all("SSRF guard" in a["error"] for a in delivery["attempts_log"])
    assert receiver.received == [] and receiver.unverified == []


async def test_odd_answers_are_logged_as_attempts_not_crashes(client, auth, tenant, register, worker):
    """A Retry-After that is not a number and a body with a NUL byte must not wedge the delivery."""
    rcv = await Receiver(_answers(Answer(503, {"retry-after": "soon"}), Answer(200, body=b"ok\x00!"))).start()
    try:
        queued = await _test_event(client, auth, tenant, await register(rcv))
        delivery = await _until(lambda: _done(client, auth, tenant, queued["delivery_id"]))
        assert delivery["status"] == "delivered"
        log = [(a["status_code"], a["response_body"]) for a in delivery["attempts_log"]]
        assert log == [(503, "ok"), (200, "ok!")]
    finally:
        await rcv.stop()


async def test_a_hanging_endpoint_cannot_take_every_send_slot(client, auth, tenant, register, start_worker, db):
    start_worker(webhook_concurrency=4, webhook_max_in_flight_per_endpoint=2, webhook_timeout_seconds=2.0)
    hanging = await Receiver(lambda _: Answer(200, delay=5)).start()
    healthy = await Receiver().start()
    try:
        slow = await register(hanging)
        for _ in range(6):  # six independent messages, each could take a slot
            await _test_event(client, auth, tenant, slow)
        await asyncio.sleep(0.3)
        fine = await register(healthy)
        started = time.monotonic()
        await _test_event(client, auth, tenant, fine)
        await healthy.wait_for(1, timeout=1.5)
        assert time.monotonic() - started < 1.5
        in_flight = await db.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1::uuid AND lease_token IS NOT NULL",
            slow["id"])
        assert in_flight <= 2
    finally:
        await hanging.stop()
        await healthy.stop()


async def test_retrying_a_delivery_that_is_being_sent_is_a_conflict(client, auth, tenant, register, worker):
    rcv = await Receiver(lambda _: Answer(200, delay=1.0)).start()
    try:
        queued = await _test_event(client, auth, tenant, await register(rcv))
        await _until(lambda: _in_flight(client, auth, tenant, queued["delivery_id"]), timeout=3)
        response = await client.post(f"/v1/webhook-deliveries/{queued['delivery_id']}/retry",
                                     headers=auth(tenant, "webhooks:admin"))
        assert response.status_code == 409 and response.json()["type"].endswith("conflict")
        await rcv.wait_for(1)
    finally:
        await rcv.stop()


async def _in_flight(client, auth, tenant, delivery_id):
    """Claimed: still pending, with its lease (next_attempt_at) in the future."""
    d = await _delivery(client, auth, tenant, delivery_id)
    return d["status"] == "pending" and d["next_attempt_at"] is not None and \
        datetime.fromisoformat(d["next_attempt_at"]) > datetime.now(UTC)


async def test_later_changes_wait_with_their_predecessor_instead_of_staying_due(client, auth, tenant, register,
                                                                                start_worker, db, demo):
    """While a person's first message waits for its retry, their later ones are not due either, so the
    claim does not re-read them every round (the cost grows with every blocked row, for every endpoint)."""
    from tests.helpers import sign_up

    start_worker(webhook_retry_schedule=(0, 3, 3))
    rcv = await Receiver(lambda _: Answer(500)).start()
    try:
        endpoint = await register(rcv, purposes=["marketing-sms"])
        headers = auth(tenant)
        await sign_up(client, headers, "queue-1", {"marketing-sms"})
        await rcv.wait_for(1)

        async def first_failure_recorded():
            return await db.fetchval("SELECT attempts FROM webhook_deliveries WHERE endpoint_id = $1::uuid",
                                     endpoint["id"]) == 1

        await _until(first_failure_recorded)
        await client.post("/v1/subjects/queue-1/consents/marketing-sms/withdraw", json={}, headers=headers)
        await client.post("/v1/subjects/queue-1/consents", headers=headers, json={
            **(await _preferences_grant(client, headers))})
        await asyncio.sleep(0.3)
        rows = await db.fetch(
            """SELECT seq, attempts, next_attempt_at, next_attempt_at > now() AS waiting FROM webhook_deliveries
               WHERE endpoint_id = $1::uuid ORDER BY seq""", endpoint["id"])
        assert len(rows) == 3 and rows[0]["attempts"] == 1
        assert all(r["waiting"] for r in rows), [dict(r) for r in rows]
        assert {r["next_attempt_at"] for r in rows} == {rows[0]["next_attempt_at"]}
        assert len(rcv.received) == 1  # the later ones were never tried out of order
    finally:
        await rcv.stop()


async def _preferences_grant(client, headers):
    from tests.helpers import decisions_for, form

    return decisions_for(await form(client, headers, "preferences"), {"marketing-sms"})
