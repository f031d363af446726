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
        "status": "withdrawn", "previous_status": "granted", "version": 2, "event_id": event["id"],
        "occurred_at": data["occurred_at"],
    }
    assert set(withdrawn.json) == {"type", "timestamp", "data"}
    assert withdrawn.headers["webhook-signature"].startswith("v1,")
    assert granted.id != withdrawn.id
