"""Standard Webhooks signatures, checked by the public `standardwebhooks` package in the receiver."""

from __future__ import annotations

import asyncio

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.webhooks import signing
from tests.webhooks.receiver import Answer, Receiver


def test_signature_matches_the_reference_implementation():
    secret = signing.new_secret()
    body = '{"type":"consent.withdrawn"}'
    headers = signing.headers([secret], "msg-1", 1_790_000_000, body.encode())
    from datetime import UTC, datetime

    expected = Webhook(secret).sign("msg-1", datetime.fromtimestamp(1_790_000_000, UTC), body)
    assert headers["webhook-signature"] == expected


async def _send_test(client, auth, tenant, endpoint_id):
    response = await client.post(f"/v1/webhook-endpoints/{endpoint_id}/test", headers=auth(tenant, "webhooks:admin"))
    assert response.status_code == 202


async def test_rotation_sends_both_signatures_during_the_grace_period_then_only_the_new(
        client, auth, tenant, receiver, register, worker):
    endpoint = await register(receiver)
    old = endpoint["secret"]
    rotated = (await client.post(f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret",
                                 json={"grace_seconds": 600}, headers=auth(tenant, "webhooks:admin"))).json()
    new = rotated["secret"]
    receiver.secrets = [old, new]
    await _send_test(client, auth, tenant, endpoint["id"])
    (during,) = await receiver.wait_for(1)
    assert during.verified_with == [old, new]  # a receiver still on the old secret keeps working
    assert len(during.headers["webhook-signature"].split(" ")) == 2

    newest = (await client.post(f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret",
                                json={"grace_seconds": 0}, headers=auth(tenant, "webhooks:admin"))).json()["secret"]
    receiver.secrets = [old, new, newest]
    await _send_test(client, auth, tenant, endpoint["id"])
    _, after = await receiver.wait_for(2)
    assert after.verified_with == [newest]
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(after.body, after.headers)


async def test_a_wrong_secret_does_not_verify(client, auth, tenant, register, worker):
    rcv = await Receiver().start()
    try:
        endpoint = await register(rcv)
        rcv.secrets = [signing.new_secret()]
        await _send_test(client, auth, tenant, endpoint["id"])
        for _ in range(50):
            if rcv.unverified:
                break
            await asyncio.sleep(0.1)
        assert rcv.unverified and not rcv.received
    finally:
        await rcv.stop()


async def test_webhook_id_is_stable_across_retries_and_timestamp_is_fresh(client, auth, tenant, register, worker):
    answers = [Answer(500), Answer(200)]
    rcv = await Receiver(lambda _: answers.pop(0) if len(answers) > 1 else answers[0]).start()
    try:
        endpoint = await register(rcv)
        await _send_test(client, auth, tenant, endpoint["id"])
        first, second = await rcv.wait_for(2)
        assert first.id == second.id
        assert first.body == second.body
        assert first.json["type"] == "webhook.test"
        for attempt in (first, second):  # each attempt is stamped when it is sent (receivers allow 5 min)
            assert abs(int(attempt.headers["webhook-timestamp"]) - attempt.received_at) < 2
    finally:
        await rcv.stop()
