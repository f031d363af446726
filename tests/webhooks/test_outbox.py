"""Transactional outbox: messages exist exactly when the consent change committed (invariant 8)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from app.auth.deps import Principal
from app.consents import service
from app.consents.schemas import ConsentRecord
from tests.helpers import decisions_for, form, sign_up

pytestmark = pytest.mark.usefixtures("demo")


async def _messages(db, tenant: str) -> int:
    return await db.fetchval("SELECT count(*) FROM webhook_messages WHERE tenant_id = $1", tenant)


async def test_committed_consent_is_delivered_and_a_failed_request_never_is(
        client, auth, tenant, receiver, register, worker, db):
    await register(receiver)
    headers = auth(tenant)
    body = decisions_for(await form(client, headers), {"marketing-sms"})
    refused_required = {**body, "decisions": [
        {**d, "decision": "refused"} if d["purpose"] == "membership" else d for d in body["decisions"]]}
    failed = await client.post("/v1/subjects/rolled-back/consents", json=refused_required, headers=headers)
    assert failed.status_code == 422
    ok = await client.post("/v1/subjects/committed/consents", json=body, headers=headers)
    assert ok.status_code == 201

    received = await receiver.wait_for(1)
    await asyncio.sleep(1.0)  # longer than a poll interval: anything else queued would have arrived
    assert {r.json["data"]["subject_id"] for r in receiver.received} == {"committed"}
    assert len(received) == await _messages(db, tenant)


async def test_messages_written_in_a_rolled_back_transaction_never_exist(app, client, auth, tenant, receiver,
                                                                         register, worker, db):
    """The outbox write shares the consent's transaction: roll it back after the write, nothing remains."""
    await register(receiver)
    body = ConsentRecord.model_validate(decisions_for(await form(client, auth(tenant)), {"marketing-sms"}))
    principal = Principal(tenant=tenant, sub="tester", scopes=frozenset({"consents:write"}))

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with app.state.pool.acquire() as conn, conn.transaction():
            await service.record(conn, principal, subject_id="ghost", body=body,
                                 client=service.ClientInfo(ip=None, user_agent=None),
                                 idempotency_key=None, request_path="/test")
            assert await conn.fetchval("SELECT count(*) FROM webhook_messages WHERE tenant_id = $1", tenant) > 0
            raise Abort
    await asyncio.sleep(1.0)
    assert await _messages(db, tenant) == 0
    assert receiver.received == [] and receiver.unverified == []


async def test_one_message_per_change_and_one_delivery_per_subscribed_endpoint(
        client, auth, tenant, receiver, register, worker, db, start_worker):
    from tests.webhooks.receiver import Receiver

    email = await Receiver().start()
    try:
        await register(receiver, channels=["sms"])                  # the SMS sender
        await register(email, channels=["email"])                   # the email sender
        everything = await register(receiver, kinds=[])             # every kind, every channel
        headers = auth(tenant)
        await sign_up(client, headers, "m-1", {"marketing-sms", "marketing-email"})
        signup_purposes = len((await form(client, headers))["purposes"])
        await email.wait_for(1)
        # the SMS endpoint: 1; the catch-all: one per purpose on the form
        await receiver.wait_for(1 + signup_purposes)
        assert [r.json["data"]["purpose"] for r in email.received] == ["marketing-email"]
        sms = [r for r in receiver.received if r.json["data"]["channel"] == "sms"]
        assert len(sms) == 2 and sms[0].id == sms[1].id  # same message, two endpoints, one webhook-id
        assert await _messages(db, tenant) == signup_purposes
        per_endpoint = await db.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1::uuid", everything["id"])
        assert per_endpoint == signup_purposes
    finally:
        await email.stop()


async def test_refusal_at_first_ask_and_withdrawal_notify_but_a_repeated_grant_does_not(
        client, auth, tenant, receiver, register, worker, db):
    await register(receiver, channels=["kakao"])
    headers = auth(tenant)
    await sign_up(client, headers, "m-2", set())  # kakao refused at first ask
    (refused,) = await receiver.wait_for(1)
    assert refused.json["type"] == "consent.refused"
    assert refused.json["data"]["previous_status"] is None and refused.json["data"]["version"] == 1

    prefs = await form(client, headers, "preferences")
    grant = decisions_for(prefs, {"marketing-kakao"})
    for _ in range(2):  # the second submission repeats the same decision: no status change
        assert (await client.post("/v1/subjects/m-2/consents", json=grant, headers=headers)).status_code == 201
    untick = decisions_for(prefs, set())
    assert (await client.post("/v1/subjects/m-2/consents", json=untick, headers=headers)).status_code == 201
    received = await receiver.wait_for(3)
    await asyncio.sleep(0.8)
    assert [(r.json["type"], r.json["data"]["version"]) for r in receiver.received] == [
        ("consent.refused", 1), ("consent.granted", 2), ("consent.withdrawn", 4)]
    assert len(received) == 3


async def test_event_type_filter(client, auth, tenant, receiver, register, worker):
    await register(receiver, channels=["sms"], event_types=["consent.withdrawn"])
    headers = auth(tenant)
    await sign_up(client, headers, "m-3", {"marketing-sms"})
    await client.post("/v1/subjects/m-3/consents/withdraw", json={"kind": "marketing"}, headers=headers)
    (only,) = await receiver.wait_for(1)
    assert only.json["type"] == "consent.withdrawn"


async def test_third_party_subscription_hears_per_recipient_withdrawal(client, auth, tenant, receiver, register,
                                                                       worker):
    await register(receiver, kinds=["third_party"], purposes=["third-party-insurers"])
    headers = auth(tenant)
    await sign_up(client, headers, "m-4", {"third-party-insurers", "third-party-partners"})
    await client.post("/v1/subjects/m-4/consents/third-party-insurers/withdraw", json={}, headers=headers)
    granted, withdrawn = await receiver.wait_for(2)
    assert (granted.json["data"]["purpose"], withdrawn.json["data"]["status"]) == ("third-party-insurers",
                                                                                   "withdrawn")
    assert granted.json["data"]["channel"] is None


async def test_disabled_endpoint_gets_no_new_messages(client, auth, tenant, receiver, register, worker, db):
    endpoint = await register(receiver, channels=["sms"])
    headers = auth(tenant)
    await client.patch(f"/v1/webhook-endpoints/{endpoint['id']}", json={"enabled": False},
                       headers=auth(tenant, "webhooks:admin"))
    await sign_up(client, headers, f"m-{uuid.uuid4().hex[:6]}", {"marketing-sms"})
    await asyncio.sleep(0.8)
    assert receiver.received == []
    assert await _messages(db, tenant) == 0
