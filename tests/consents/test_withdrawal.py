from __future__ import annotations

from tests.helpers import decisions_for, form, sign_up


async def test_withdraw_one_purpose_then_again_writes_once(client, auth, demo, db):
    headers = auth(demo)
    assert (await sign_up(client, headers, "w-1", granted={"marketing-sms", "marketing-email"})).status_code == 201
    first = await client.post("/v1/subjects/w-1/consents/marketing-sms/withdraw", headers=headers,
                              json={"reason": "too many texts"})
    assert first.status_code == 200
    result = first.json()["results"][0]
    assert (result["changed"], result["status"]) == (True, "withdrawn")
    assert result["event"]["previous_status"] == "granted"
    assert result["event"]["version"] == 2
    assert result["event"]["reason"] == "too many texts"

    again = await client.post("/v1/subjects/w-1/consents/marketing-sms/withdraw", headers=headers)
    assert again.status_code == 200
    result = again.json()["results"][0]
    assert result["changed"] is False and result["event"] is None
    assert "already withdrawn" in result["detail"]
    count = await db.fetchval(
        "SELECT count(*) FROM consent_events e JOIN subjects s ON s.id = e.subject_id JOIN purposes p "
        "ON p.id = e.purpose_id WHERE s.tenant_id = $1 AND s.external_id = 'w-1' AND e.action = 'withdrawn'", demo)
    assert count == 1
    state = (await client.get("/v1/subjects/w-1/consents", headers=headers)).json()
    statuses = {c["purpose"]: c["status"] for c in state["consents"]}
    assert statuses["marketing-sms"] == "withdrawn"
    assert statuses["marketing-email"] == "granted"


async def test_withdraw_all_marketing(client, auth, demo):
    headers = auth(demo)
    await sign_up(client, headers, "w-2", granted={"marketing", "marketing-sms", "marketing-kakao", "analytics"})
    response = await client.post("/v1/subjects/w-2/consents/withdraw", json={"kind": "marketing"}, headers=headers)
    assert response.status_code == 200
    changed = {r["purpose"] for r in response.json()["results"] if r["changed"]}
    assert changed == {"marketing", "marketing-sms", "marketing-kakao"}
    unchanged = {r["purpose"]: r["status"] for r in response.json()["results"] if not r["changed"]}
    assert unchanged["marketing-email"] == "refused"
    state = {c["purpose"]: c["status"] for c in
             (await client.get("/v1/subjects/w-2/consents", headers=headers)).json()["consents"]}
    assert state["analytics"] == "granted"
    assert state["membership"] == "acknowledged"  # contract (PIPA Art. 15(1)4): no consent to withdraw


async def test_withdraw_one_recipient_leaves_the_other(client, auth, demo):
    headers = auth(demo)
    await sign_up(client, headers, "w-3", granted={"third-party-insurers", "third-party-partners"})
    response = await client.post("/v1/subjects/w-3/consents/third-party-insurers/withdraw", headers=headers)
    assert response.json()["results"][0]["changed"] is True
    state = {c["purpose"]: c["status"] for c in
             (await client.get("/v1/subjects/w-3/consents", headers=headers)).json()["consents"]}
    assert state["third-party-insurers"] == "withdrawn"
    assert state["third-party-partners"] == "granted"


async def test_same_kind_of_caller_withdraws_without_extra_scope(client, auth, demo):
    writer = auth(demo, "consents:write")
    await sign_up(client, auth(demo), "w-4", granted={"marketing-email"})
    response = await client.post("/v1/subjects/w-4/consents/marketing-email/withdraw", headers=writer)
    assert response.status_code == 200
    reader = auth(demo, "consents:read")
    response = await client.post("/v1/subjects/w-4/consents/marketing-email/withdraw", headers=reader)
    assert response.status_code == 403


async def test_withdraw_unknown_subject_purpose_or_never_decided(client, auth, demo):
    headers = auth(demo)
    response = await client.post("/v1/subjects/nobody/consents/marketing-sms/withdraw", headers=headers)
    assert response.status_code == 404
    await sign_up(client, headers, "w-5")
    response = await client.post("/v1/subjects/w-5/consents/no-such-purpose/withdraw", headers=headers)
    assert response.status_code == 404
    response = await client.post("/v1/subjects/w-5/consents/marketing-push/withdraw", headers=headers)
    assert response.status_code == 409  # never asked on the sign-up form


async def test_unticking_on_preference_page_is_a_withdrawal(client, auth, demo):
    headers = auth(demo)
    await sign_up(client, headers, "w-6", granted={"marketing", "marketing-sms"})
    prefs = decisions_for(await form(client, headers, "preferences"), {"marketing"})
    response = await client.post("/v1/subjects/w-6/consents", json=prefs, headers=headers)
    assert response.status_code == 201
    by_purpose = {e["purpose"]: e for e in response.json()["events"]}
    assert by_purpose["marketing-sms"]["action"] == "withdrawn"
    assert by_purpose["marketing-push"]["action"] == "refused"
    assert by_purpose["marketing"]["version"] == 2


async def test_bulk_withdraw_needs_exactly_one_selector(client, auth, demo):
    headers = auth(demo)
    await sign_up(client, headers, "w-7")
    response = await client.post("/v1/subjects/w-7/consents/withdraw", json={}, headers=headers)
    assert response.status_code == 422
    response = await client.post("/v1/subjects/w-7/consents/withdraw",
                                 json={"kind": "marketing", "purposes": ["marketing"]}, headers=headers)
    assert response.status_code == 422
