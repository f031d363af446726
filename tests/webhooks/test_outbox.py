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
                                 idempotency_key=None, request_path="/test", proof=app.state.proof)
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
        # purposes processed without consent are acknowledged: no consent change, no message
        signup_purposes = len([p for p in (await form(client, headers))["purposes"] if p["checkbox"]])
        # A channel filter also hears the consents binding every channel: the umbrella marketing
        # consent and night-time sending. The catch-all hears every consent purpose on the form.
        await email.wait_for(3)
        await receiver.wait_for(3 + signup_purposes)
        await asyncio.sleep(0.5)
        assert sorted(r.json["data"]["purpose"] for r in email.received) == [
            "marketing", "marketing-email", "marketing-night"]
        sms_endpoint = [r for r in receiver.received if r.json["data"]["channel"] == "sms"]
        assert len(sms_endpoint) == 2 and sms_endpoint[0].id == sms_endpoint[1].id  # one message, two endpoints
        assert len(receiver.received) == 3 + signup_purposes
        assert await _messages(db, tenant) == signup_purposes
        per_endpoint = await db.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1::uuid", everything["id"])
        assert per_endpoint == signup_purposes
    finally:
        await email.stop()


async def test_refusal_at_first_ask_and_withdrawal_notify_but_a_repeated_grant_does_not(
        client, auth, tenant, receiver, register, worker, db):
    await register(receiver, channels=["kakao"], purposes=["marketing-kakao"])
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


async def test_pipa_22_1_a_processor_subscribes_by_category_and_hears_category_and_legal_basis(
        client, auth, tenant, receiver, register, worker, db):
    """Issue 9 point 7: the message body carries the purpose's category and legal basis, and an
    endpoint may filter by separate-consent category (PIPA Art. 22(1))."""
    endpoint = await register(receiver, kinds=[], categories=["third_party"])
    assert endpoint["categories"] == ["third_party"]
    headers = auth(tenant)
    await sign_up(client, headers, "m-cat", {"third-party-partners", "marketing-sms", "analytics"})
    heard = await receiver.wait_for(2)
    await asyncio.sleep(0.5)
    assert len(receiver.received) == 2  # the two third-party consents, nothing of the other categories
    assert sorted(r.json["data"]["purpose"] for r in heard) == ["third-party-insurers", "third-party-partners"]
    assert {(r.json["data"]["category"], r.json["data"]["legal_basis"]) for r in heard} == {("third_party", "consent")}
    response = await client.post("/v1/webhook-endpoints", headers=auth(tenant, "webhooks:admin"),
                                 json={"url": receiver.url, "categories": ["contract"]})
    assert response.status_code == 422  # a legal basis is not a consent category


async def test_a_disabled_endpoint_keeps_its_messages_until_enabled(client, auth, tenant, receiver, register,
                                                                     worker, db):
    endpoint = await register(receiver, channels=["sms"], purposes=["marketing-sms"])
    headers, admin = auth(tenant), auth(tenant, "webhooks:admin")
    url = f"/v1/webhook-endpoints/{endpoint['id']}"
    await client.patch(url, json={"enabled": False}, headers=admin)
    subject = f"m-{uuid.uuid4().hex[:6]}"
    await sign_up(client, headers, subject, {"marketing-sms"})
    await client.post(f"/v1/subjects/{subject}/consents/marketing-sms/withdraw", json={}, headers=headers)
    await asyncio.sleep(0.8)
    assert receiver.received == []
    waiting = (await client.get(f"{url}/deliveries", headers=admin)).json()["items"]
    assert [(d["status"], d["next_attempt_at"]) for d in waiting] == [("pending", None)] * 2

    await client.patch(url, json={"enabled": True}, headers=admin)
    granted, withdrawn = await receiver.wait_for(2)
    assert (granted.json["type"], withdrawn.json["type"]) == ("consent.granted", "consent.withdrawn")
