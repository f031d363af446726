"""PIPA Art. 21 (destruction when the purpose ends, statutory retention kept apart), e-commerce act
Art. 6: withdrawals and the end of the relationship owe destruction duties with their dates."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from tests.helpers import decisions_for, form

KST = timezone(timedelta(hours=9))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def duties(client, headers, **params) -> list[dict]:
    response = await client.get("/v1/duties", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def test_pipa_21_a_withdrawal_owes_destruction_and_the_end_of_the_relationship_its_statutory_periods(
        client, auth, demo):
    headers = auth(demo, "consents:write", "consents:read", "duties:read", "duties:write", "catalog:read",
                   sub="dpo")
    body = decisions_for(await form(client, headers), {"analytics", "marketing", "marketing-sms"})
    body["occurred_at"] = "2026-01-31T15:00:00+09:00"
    assert (await client.post("/v1/subjects/d-1/consents", json=body, headers=headers)).status_code == 201
    purposes = {p["key"]: p for p in (await client.get("/v1/purposes", headers=headers)).json()}
    assert purposes["membership"]["retention"]["years"] == 5

    withdrawal = {"occurred_at": "2026-02-02T10:00:00+09:00"}
    assert (await client.post("/v1/subjects/d-1/consents/analytics/withdraw", json=withdrawal,
                              headers=headers)).status_code == 200
    (analytics,) = await duties(client, headers, subject_id="d-1", kind="destruction")
    # no statutory period: destroyed without delay, within 5 days (3 Feb .. 7 Feb)
    assert analytics["purpose"] == "analytics" and at(analytics["due_at"]) == datetime(2026, 2, 8, tzinfo=KST)
    assert analytics["contents"]["keep_apart_until"] is None

    ended = await client.post("/v1/subjects/d-1/terminate", headers=headers,
                              json={"occurred_at": "2026-02-28T18:00:00+09:00", "reason": "account deleted"})
    assert ended.status_code == 200, ended.text
    actions = {e["purpose"]: e["action"] for e in ended.json()["events"]}
    assert actions["membership"] == "expired" and actions["fraud-prevention"] == "expired"
    assert actions["marketing-sms"] == "withdrawn" and "analytics" not in actions  # already withdrawn
    by = {d["purpose"]: d for d in await duties(client, headers, subject_id="d-1", kind="destruction")}
    # membership: contract records kept 5 years from 1 Mar 2026 (the day after; Civil Act Art. 157), to
    # 28 Feb 2031 (Art. 160(2)), apart; then destroyed within 5 days
    assert at(by["membership"]["notify_at"]) == datetime(2031, 3, 1, tzinfo=KST)
    assert at(by["membership"]["due_at"]) == datetime(2031, 3, 6, tzinfo=KST)
    assert by["membership"]["contents"]["keep_apart_until"] is not None
    assert "전자상거래법" in by["membership"]["contents"]["article"]
    assert at(by["fraud-prevention"]["notify_at"]) == datetime(2029, 3, 1, tzinfo=KST)
    assert at(by["marketing-sms"]["due_at"]) == datetime(2026, 3, 6, tzinfo=KST)
    state = {c["purpose"]: c["status"] for c in
             (await client.get("/v1/subjects/d-1/consents", headers=headers)).json()["consents"]}
    assert state["membership"] == "expired" and state["marketing-sms"] == "withdrawn"
    again = await client.post("/v1/subjects/d-1/terminate", headers=headers)
    assert again.status_code == 200 and again.json()["events"] == []

    url = f"/v1/duties/{analytics['id']}/fulfilment"
    incomplete = await client.post(url, json={"outcome": "done", "what": "analytics profile"}, headers=headers)
    assert incomplete.status_code == 422 and incomplete.json()["errors"][0]["field"] == "body.how"
    done = await client.post(url, headers=headers, json={
        "outcome": "done", "what": "analytics profile and event logs", "how": "irreversible deletion",
        "by": "data team", "at": "2026-02-04T11:00:00+09:00"})
    assert done.status_code == 201, done.text
    assert done.json()["fulfilment"]["by"] == "data team" and done.json()["fulfilment"]["recorded_by"] == "dpo"
    assert done.json()["fulfilment"]["late"] is False
    report = (await client.get("/v1/subjects/d-1/consents/verify", headers=auth(demo, "audit:read"))).json()
    assert report["valid"], report["breaks"]
