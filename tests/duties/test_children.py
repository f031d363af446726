"""PIPA Art. 22-2, Decree Art. 17-2: a child under 14 is signed up by a verified legal guardian, and
asked themself on turning 14 (a duty). The ledger keeps no birth date."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from tests.helpers import decisions_for, form

KST = timezone(timedelta(hours=9))
GUARDIAN = {"type": "guardian", "guardian": {"verification_method": "sms", "reference": "sms-tx-77"}}


async def kids_form(client, headers, demo_headers):
    created = await client.post("/v1/collection-points", headers=demo_headers, json={
        "key": "kids-signup", "name": "어린이 회원가입", "kind": "signup", "notice_key": "privacy-policy",
        "purposes": ["membership", "marketing-sms"], "for_children": True})
    assert created.status_code == 201, created.text
    assert created.json()["for_children"] is True
    return await form(client, headers, "kids-signup")


def in_years(years: int) -> str:
    today = datetime.now(KST).date()
    return str(today.replace(year=today.year + years, day=min(today.day, 28)))


async def test_pipa_22_2_a_child_is_signed_up_by_a_verified_guardian_only(client, auth, demo, db):
    headers = auth(demo, "consents:write", "duties:read", "audit:read", "catalog:write", "catalog:read")
    kids = await kids_form(client, headers, headers)
    body = decisions_for(kids, {"marketing-sms"})
    turns = in_years(5)

    def post(member, **extra):
        return client.post(f"/v1/subjects/{member}/consents", headers=headers, json={**body, **extra})

    themself = await post("kid-1", child={"turns_14_on": turns})
    assert themself.status_code == 422 and themself.json()["errors"][0]["field"] == "body.actor.type"
    elsewhere = decisions_for(await form(client, headers), {"marketing-sms"})
    response = await client.post("/v1/subjects/kid-1/consents", headers=headers,
                                 json={**elsewhere, "actor": GUARDIAN, "child": {"turns_14_on": turns}})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "body.child"
    for guardian, field in (({"verification_method": "other", "reference": "x"}, "description"),
                            ({"verification_method": "sms"}, "reference"),
                            ({"verification_method": "ipin", "reference": "x"}, "verification_method")):
        bad = await post("kid-1", actor={"type": "guardian", "guardian": guardian}, child={"turns_14_on": turns})
        assert bad.status_code == 422, (guardian, bad.text)
        assert field in bad.text
    grown = await post("kid-1", actor=GUARDIAN, child={"turns_14_on": str(datetime.now(KST).date())})
    assert grown.status_code == 422 and grown.json()["errors"][0]["field"] == "body.child.turns_14_on"
    assert await db.fetchval("SELECT count(*) FROM subjects WHERE tenant_id = $1 AND external_id = 'kid-1'",
                             demo) == 0  # nothing half-written

    ok = await post("kid-1", actor=GUARDIAN, child={"turns_14_on": turns})
    assert ok.status_code == 201, ok.text
    assert {e["actor"]["type"] for e in ok.json()["events"]} == {"guardian"}
    evidence = (await client.get("/v1/subjects/kid-1/evidence", headers=headers)).json()["items"]
    assert evidence[0]["guardian"]["verification_method"] == "sms"
    assert evidence[0]["guardian"]["reference"] == "sms-tx-77"

    (duty,) = (await client.get("/v1/duties", headers=headers,
                                params={"subject_id": "kid-1", "kind": "ask_at_14"})).json()["items"]
    turns_at = datetime.fromisoformat(turns).replace(tzinfo=KST)
    assert datetime.fromisoformat(duty["notify_at"].replace("Z", "+00:00")) == turns_at
    assert duty["status"] == "due" and duty["contents"]["given_by_guardian"] == ["marketing-sms"]
    # a later guardian's act does not ask twice
    again = await client.post("/v1/subjects/kid-1/consents", headers=headers,
                              json={**decisions_for(kids, set()), "actor": GUARDIAN, "child": {"turns_14_on": turns}})
    assert again.status_code == 201
    asked = (await client.get("/v1/duties", headers=headers,
                              params={"subject_id": "kid-1", "kind": "ask_at_14"})).json()["items"]
    assert len(asked) == 1
    report = (await client.get("/v1/subjects/kid-1/consents/verify", headers=headers)).json()
    assert report["valid"], report["breaks"]
