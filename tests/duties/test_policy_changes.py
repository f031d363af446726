"""Policy changes: announced 7 days ahead, 30 when unfavourable or material (e-commerce standard
terms Art. 3(4)); a material change of what was consented to needs fresh consent (PIPA Art. 15(2),
17(2))."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def notice(version: str, days: float, **extra) -> dict:
    return {"key": "privacy-policy", "version": version, "title": "개인정보 처리방침 (개정)", "body": f"본문 {version}",
            "effective_at": (datetime.now(UTC) + timedelta(days=days)).isoformat(), "publish": True, **extra}


async def test_standard_terms_3_4_a_change_is_announced_7_days_ahead_30_when_material_or_forced_with_a_reason(
        client, auth, demo):
    headers = auth(demo, "catalog:write", "catalog:read", sub="dpo")
    early = await client.post("/v1/notices", headers=headers, json=notice("v2", 6.9))
    assert early.status_code == 422 and early.json()["errors"][0]["field"] == "body.effective_at"
    assert (await client.post("/v1/notices", headers=headers, json=notice("v2", 7.01))).status_code == 201
    material = await client.post("/v1/notices", headers=headers, json=notice("v3", 20, impact="material"))
    assert material.status_code == 422 and "30 days" in material.json()["detail"]
    forced = await client.post("/v1/notices", headers=headers,
                               json=notice("v3", 1, impact="unfavourable", force_reason="a court order"))
    assert forced.status_code == 201, forced.text
    assert forced.json()["forced_reason"] == "a court order" and forced.json()["forced_by"] == "dpo"
    # a draft published later is held to the same rule
    draft = (await client.post("/v1/notices", headers=headers, json=notice("v4", 3, publish=False))).json()
    assert (await client.post(f"/v1/notices/{draft['id']}/publish", headers=headers)).status_code == 422
    published = await client.post(f"/v1/notices/{draft['id']}/publish", headers=headers,
                                  json={"force_reason": "security fix"})
    assert published.status_code == 200 and published.json()["forced_reason"] == "security fix"


async def test_pipa_15_2_a_material_change_of_wording_needs_fresh_consent_from_its_date(
        client, auth, demo, endpoint, run_scheduler, db):
    from tests.helpers import decisions_for, form

    headers = auth(demo, "consents:write", "consents:read", "catalog:write", "catalog:read", "duties:read",
                   "permissions:read", "audit:read", sub="dpo")
    await endpoint(demo, channels=("sms",))
    for member in ("m-1", "m-2"):
        body = decisions_for(await form(client, headers), {"marketing", "marketing-sms"})
        assert (await client.post(f"/v1/subjects/{member}/consents", json=body, headers=headers)).status_code == 201
    purpose = next(p for p in (await client.get("/v1/purposes", headers=headers)).json()
                   if p["key"] == "marketing-sms")
    disclosures = purpose["disclosures"]
    disclosures["ko"]["items"] = [*disclosures["ko"]["items"], "위치정보"]
    disclosures["en"]["items"] = [*disclosures["en"]["items"], "location"]
    changed = await client.patch("/v1/purposes/marketing-sms", headers=headers, json={
        "disclosures": disclosures, "material": True, "reason": "location-based offers"})
    assert changed.status_code == 200, changed.text
    # m-2 gives consent again on the new wording before the worker runs: not asked twice
    body = decisions_for(await form(client, headers, "preferences"), {"marketing", "marketing-sms"})
    assert (await client.post("/v1/subjects/m-2/consents", json=body, headers=headers)).status_code == 201

    moved = await run_scheduler()
    assert moved["reconsent"] == 1
    assert (await run_scheduler())["reconsent"] == 0  # finished, never twice
    (duty,) = (await client.get("/v1/duties", headers=headers, params={"kind": "reconsent"})).json()["items"]
    assert duty["subject_id"] == "m-1" and duty["contents"]["reason"] == "location-based offers"
    message = await db.fetchrow("SELECT body FROM webhook_messages WHERE tenant_id = $1 AND "
                                "type = 'consent.reconsent_required'", demo)
    assert message is not None and '"m-1"' in message["body"]
    answer = (await client.get("/v1/subjects/m-1/permissions/sms", headers=headers,
                               params={"at": "2030-01-01T12:00:00+09:00"})).json()
    assert answer["allowed"] is False and "reconsent_required" in {r["code"] for r in answer["reasons"]}
    # the audience check says the same for the whole campaign
    audience = (await client.post("/v1/permissions/sms/check", params={"at": "2030-01-01T12:00:00+09:00"},
                                  headers=headers, json={"subject_ids": ["m-1", "m-2"]})).json()
    assert audience["allowed"] == ["m-2"]
    assert audience["denied"] == [{"reasons": ["reconsent_required"], "subject_ids": ["m-1"]}]
    # asking is not consent: a reconsent is met only by a new grant
    assert (await client.post(f"/v1/duties/{duty['id']}/fulfilment", headers=auth(demo, "duties:write"),
                              json={"outcome": "sent", "channel": "sms"})).status_code == 409
    # once the sign-up's result notice (due in 14 days) is sent, the reconsent (30 days) is next
    (notice,) = (await client.get("/v1/duties", headers=headers,
                                  params={"kind": "ad_result_notice", "subject_id": "m-1"})).json()["items"]
    assert (await client.post(f"/v1/duties/{notice['id']}/fulfilment", headers=auth(demo, "duties:write"),
                              json={"outcome": "sent", "channel": "sms"})).status_code == 201
    state = {c["purpose"]: c for c in (await client.get("/v1/subjects/m-1/consents", headers=headers)).json()
             ["consents"]}
    assert state["marketing-sms"]["next_duty"]["kind"] == "reconsent"

    # the person consents again on the new wording: the duty is done and the check allows
    body = decisions_for(await form(client, headers, "preferences"), {"marketing", "marketing-sms"})
    assert (await client.post("/v1/subjects/m-1/consents", json=body, headers=headers)).status_code == 201
    done = (await client.get(f"/v1/duties/{duty['id']}", headers=headers)).json()
    assert done["status"] == "done" and done["fulfilment"]["answer"] == "granted"
    answer = (await client.get("/v1/subjects/m-1/permissions/sms", headers=headers,
                               params={"at": "2030-01-01T12:00:00+09:00"})).json()
    assert answer["allowed"] is True
    report = (await client.get("/v1/subjects/m-1/consents/verify", headers=headers)).json()
    assert report["valid"], report["breaks"]
