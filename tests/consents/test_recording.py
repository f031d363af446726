from __future__ import annotations

from tests.helpers import decisions_for, event_count, form, sign_up


async def test_form_presents_every_purpose_unchecked_with_notice(client, auth, demo):
    body = await form(client, auth(demo))
    assert body["notice"]["version"] == "2020-02-18"
    assert len(body["notice"]["sha256"]) == 64
    keys = [p["key"] for p in body["purposes"]]
    assert keys[:2] == ["membership", "fraud-prevention"]
    assert all(p["checked"] is False for p in body["purposes"])
    insurers = next(p for p in body["purposes"] if p["key"] == "third-party-insurers")
    assert insurers["recipient"]["key"] == "insurers"
    assert insurers["disclosures"]["ko"]["recipient"] == "보험사"


async def test_sign_up_records_events_and_state(client, auth, demo, db):
    headers = auth(demo)
    response = await sign_up(client, headers, "m-1", granted={"marketing", "marketing-sms"},
                             occurred_at="2026-01-01T09:00:00+09:00")
    assert response.status_code == 201, response.text
    events = response.json()["events"]
    assert len(events) == 11
    by_purpose = {e["purpose"]: e for e in events}
    assert by_purpose["marketing-sms"]["status"] == "granted"
    assert by_purpose["marketing-email"]["status"] == "refused"
    assert by_purpose["marketing-email"]["action"] == "refused"
    # The IP is evidence kept apart (erasable); the chain carries a keyed commitment to it.
    assert events[0]["evidence"]["commitment"] and "ip" not in events[0]
    evidence = (await client.get("/v1/subjects/m-1/evidence", headers=headers)).json()["items"]
    assert [(e["id"], e["ip"]) for e in evidence] == [(events[0]["evidence"]["id"], "203.0.113.7")]
    assert events[0]["occurred_at"] == "2026-01-01T00:00:00.000000Z"
    assert events[0]["recorded_at"] != events[0]["occurred_at"]
    rows = await db.fetch(
        "SELECT s.status, p.key FROM consent_states s JOIN purposes p ON p.id = s.purpose_id "
        "JOIN subjects sub ON sub.id = s.subject_id WHERE sub.tenant_id = $1 AND sub.external_id = 'm-1'", demo)
    assert {r["key"]: r["status"] for r in rows}["marketing-sms"] == "granted"
    assert len(rows) == 11


async def test_prechecked_grant_is_refused_and_nothing_written(client, auth, demo, db):
    headers = auth(demo)
    body = decisions_for(await form(client, headers), {"marketing-sms"})
    for d in body["decisions"]:
        if d["purpose"] == "marketing-sms":
            d["prechecked"] = True
    response = await client.post("/v1/subjects/m-2/consents", json=body, headers=headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("consent-rule-violation")
    assert any(e["field"].endswith(".prechecked") for e in problem["errors"])
    assert await event_count(db, demo, "m-2") == 0


async def test_grant_for_unpresented_purpose_is_refused(client, auth, demo, db):
    headers = auth(demo)
    body = decisions_for(await form(client, headers))
    body["decisions"].append({"purpose": "marketing-push", "decision": "granted"})  # not on the sign-up form
    response = await client.post("/v1/subjects/m-3/consents", json=body, headers=headers)
    assert response.status_code == 422
    assert "does not present" in response.text
    assert await event_count(db, demo, "m-3") == 0


async def test_missing_decision_is_an_error_not_a_default(client, auth, demo, db):
    headers = auth(demo)
    body = decisions_for(await form(client, headers))
    body["decisions"] = [d for d in body["decisions"] if d["purpose"] != "analytics"]
    response = await client.post("/v1/subjects/m-4/consents", json=body, headers=headers)
    assert response.status_code == 422
    assert any("'analytics'" in e["reason"] for e in response.json()["errors"])
    assert await event_count(db, demo, "m-4") == 0


async def test_refused_required_purpose_fails_whole_sign_up(client, auth, demo, db):
    """PIPA Art. 22(5): a consent the service needs (here the insurer provision, a condition of the
    insurance application) refused fails the request as a whole."""
    headers = auth(demo)
    body = decisions_for(await form(client, headers, "insurance"), {"insurance-contract"})
    for d in body["decisions"]:
        if d["purpose"] == "third-party-insurers":
            d["decision"] = "refused"
    response = await client.post("/v1/subjects/m-5/consents", json=body, headers=headers)
    assert response.status_code == 422
    assert response.json()["type"].endswith("required-consent-refused")
    assert await event_count(db, demo, "m-5") == 0
    assert await db.fetchval("SELECT count(*) FROM subjects WHERE tenant_id = $1 AND external_id = 'm-5'", demo) == 0


async def test_refusing_every_optional_and_marketing_purpose_succeeds(client, auth, demo):
    response = await sign_up(client, auth(demo), "m-6")
    assert response.status_code == 201
    statuses = {e["purpose"]: e["status"] for e in response.json()["events"]}
    assert statuses["membership"] == "acknowledged"  # processed for the contract (PIPA Art. 15(1)4)
    assert {s for k, s in statuses.items() if k not in ("membership", "fraud-prevention")} == {"refused"}


async def test_third_party_needs_matching_disclosure_hash(client, auth, demo):
    headers = auth(demo)
    body = decisions_for(await form(client, headers), {"third-party-insurers"})
    for d in body["decisions"]:
        if d["purpose"] == "third-party-insurers":
            d["disclosure_hash"] = "0" * 64
        if d["purpose"] == "third-party-partners":
            del d["disclosure_hash"]
    response = await client.post("/v1/subjects/m-7/consents", json=body, headers=headers)
    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["errors"]}
    assert len([f for f in fields if f.endswith("disclosure_hash")]) == 2


async def test_notice_must_be_the_published_one(client, auth, demo):
    headers = auth(demo)
    body = decisions_for(await form(client, headers))
    body["notice_id"] = "00000000-0000-0000-0000-000000000000"
    response = await client.post("/v1/subjects/m-8/consents", json=body, headers=headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body.notice_id"


async def test_guardian_consent_needs_verification_evidence(client, auth, demo):
    headers = auth(demo)
    body = decisions_for(await form(client, headers))
    body["actor"] = {"type": "guardian"}
    response = await client.post("/v1/subjects/child-1/consents", json=body, headers=headers)
    assert response.status_code == 422
    body["actor"] = {"type": "guardian", "guardian": {"verification_method": "mobile_identity", "reference": "tx-1"}}
    response = await client.post("/v1/subjects/child-1/consents", json=body, headers=headers)
    assert response.status_code == 201
    assert response.json()["events"][0]["actor"] == {"type": "guardian", "ref": None}
    evidence = (await client.get("/v1/subjects/child-1/evidence", headers=headers)).json()["items"]
    assert evidence[0]["guardian"]["verification_method"] == "mobile_identity"
    assert evidence[0]["id"] == response.json()["events"][0]["evidence"]["id"]


async def test_forwarded_evidence_needs_trusted_backend_scope(client, auth, demo):
    body = decisions_for(await form(client, auth(demo)))
    body["evidence"] = {"ip": "198.51.100.20", "user_agent": "Mozilla/5.0 (end user)"}
    response = await client.post("/v1/subjects/m-9/consents", json=body, headers=auth(demo, "consents:write"))
    assert response.status_code == 403
    trusted = auth(demo, "consents:write", "evidence:forward")
    response = await client.post("/v1/subjects/m-9/consents", json=body, headers=trusted)
    assert response.status_code == 201
    evidence = (await client.get("/v1/subjects/m-9/evidence", headers=auth(demo))).json()["items"]
    assert (evidence[0]["ip"], evidence[0]["user_agent"]) == ("198.51.100.20", "Mozilla/5.0 (end user)")


async def test_operator_recording_by_phone_keeps_operator_ref(client, auth, demo):
    headers = auth(demo, sub="agent-42")
    body = decisions_for(await form(client, headers))
    body.update(method="phone", actor={"type": "operator"})
    response = await client.post("/v1/subjects/m-10/consents", json=body, headers=headers)
    assert response.status_code == 201
    assert response.json()["events"][0]["actor"] == {"type": "operator", "ref": "agent-42"}


async def test_future_occurred_at_is_refused(client, auth, demo):
    response = await sign_up(client, auth(demo), "m-11", occurred_at="2099-01-01T00:00:00Z")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body.occurred_at"
