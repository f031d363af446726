"""The legal model (docs/legal-model.md): legal basis per purpose, acknowledgements, separate-consent
categories, conditions of service only where the law allows them, "agree to all", reclassification.
Each test names the article it holds the service to."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from tests.catalog.test_catalog import assert_problem, text
from tests.helpers import decisions_for, form, sign_up


def _by_key(form_body: dict) -> dict[str, dict]:
    return {p["key"]: p for p in form_body["purposes"]}


async def _states(client, headers, subject: str) -> dict[str, str]:
    body = (await client.get(f"/v1/subjects/{subject}/consents", headers=headers)).json()
    return {c["purpose"]: c["status"] for c in body["consents"]}


# --- point 1: legal basis per purpose -------------------------------------------------------------


async def test_pipa_15_1_4_a_contract_purpose_is_shown_without_a_checkbox_in_its_own_section(client, auth, demo):
    body = await form(client, auth(demo))
    membership = _by_key(body)["membership"]
    assert (membership["legal_basis"], membership["checkbox"], membership["required"], membership["category"]) == \
        ("contract", False, False, None)
    assert membership["legal_basis_article"] == "PIPA Art. 15(1)4" and membership["section"] == "without_consent"
    assert body["sections"][0]["section"] == "without_consent"
    assert body["sections"][0]["purposes"] == ["membership", "fraud-prevention"]
    assert _by_key(body)["fraud-prevention"]["legal_basis"] == "legal_obligation"
    assert all(p["checked"] is False for p in body["purposes"])


async def test_pipa_15_1_4_a_contract_purpose_is_acknowledged_never_granted(client, auth, demo, db):
    headers = auth(demo)
    body = decisions_for(await form(client, headers))
    for d in body["decisions"]:
        if d["purpose"] == "membership":
            d["decision"] = "granted"
    response = await client.post("/v1/subjects/ack-1/consents", json=body, headers=headers)
    problem = assert_problem(response, 422, "consent-rule-violation", "body.decisions[0].decision")
    assert "15(1)4" in problem["errors"][0]["reason"] and "acknowledged" in problem["errors"][0]["reason"]
    assert await db.fetchval("SELECT count(*) FROM subjects WHERE tenant_id = $1 AND external_id = 'ack-1'",
                             demo) == 0  # nothing half-written

    response = await sign_up(client, headers, "ack-1")
    assert response.status_code == 201, response.text
    event = next(e for e in response.json()["events"] if e["purpose"] == "membership")
    shown = _by_key(await form(client, headers))["membership"]
    assert (event["action"], event["status"], event["disclosure_hash"]) == \
        ("acknowledged", "acknowledged", shown["disclosure_hash"])
    assert event["notice"]["version"] == (await form(client, headers))["notice"]["version"]
    assert (await _states(client, headers, "ack-1"))["membership"] == "acknowledged"
    # no webhook message: nothing a processor must act on changed
    assert await db.fetchval("SELECT count(*) FROM webhook_messages WHERE event_id = $1", event["id"]) == 0
    # the receipt says on which basis, and that it is a notice acknowledged, not consent
    import base64, json
    jws = response.json()["receipt"]["jws"]
    payload = json.loads(base64.urlsafe_b64decode(jws.split(".")[1] + "=="))
    line = next(p for p in payload["services"][0]["purposes"] if p["purpose"] == "membership")
    assert (line["legalBasis"], line["consentType"]) == ("contract", "NOTICE_ACKNOWLEDGED")


async def test_pipa_37_a_purpose_without_consent_has_nothing_to_withdraw(client, auth, demo):
    headers = auth(demo)
    assert (await sign_up(client, headers, "ack-2")).status_code == 201
    response = await client.post("/v1/subjects/ack-2/consents/membership/withdraw", json={}, headers=headers)
    problem = assert_problem(response, 409)
    assert "without consent" in problem["detail"] and "Art. 37" in problem["detail"]


async def test_pipa_15_1_1_a_consent_purpose_is_not_merely_acknowledged(client, auth, demo):
    headers = auth(demo)
    body = decisions_for(await form(client, headers))
    index = next(i for i, d in enumerate(body["decisions"]) if d["purpose"] == "analytics")
    body["decisions"][index]["decision"] = "acknowledged"
    response = await client.post("/v1/subjects/ack-3/consents", json=body, headers=headers)
    assert_problem(response, 422, "consent-rule-violation", f"body.decisions[{index}].decision")


@pytest.mark.parametrize("kind", ["required"])
async def test_pipa_15_1_4_and_16_3_a_new_purpose_cannot_be_a_required_consent(client, auth, demo, kind):
    response = await client.post("/v1/purposes", headers=auth(demo),
                                 json={"key": "old-style", "kind": kind, "disclosures": {"ko": text()}})
    problem = assert_problem(response, 422, "invalid-request", "body.kind")
    assert "15(1)4" in problem["errors"][0]["reason"] and "16(3)" in problem["errors"][0]["reason"]


async def test_pipa_15_1_a_contract_purpose_is_created_without_refusal_wording(client, auth, demo):
    wording = {"purpose": "주문 배송", "items": ["주소"], "retention": "배송 완료 후 5년"}
    response = await client.post("/v1/purposes", headers=auth(demo), json={
        "key": "delivery", "legal_basis": "contract", "disclosures": {"ko": wording}})
    assert response.status_code == 201, response.text
    assert (response.json()["kind"], response.json()["category"]) == ("disclosed", None)
    # a consent without the right to refuse and its cost is refused (Art. 15(2)4)
    response = await client.post("/v1/purposes", headers=auth(demo), json={
        "key": "delivery-c", "category": "collection_use", "disclosures": {"ko": wording}})
    assert_problem(response, 422, "invalid-request", "body.disclosures.ko.refusal_right")
    response = await client.post("/v1/purposes", headers=auth(demo), json={
        "key": "delivery-x", "legal_basis": "contract", "category": "collection_use", "disclosures": {"ko": wording}})
    assert_problem(response, 422, "invalid-request", "body.category")


async def test_pipa_16_3_22_5_a_condition_of_service_is_refused_outside_the_categories_the_law_allows(
        client, auth, demo):
    response = await client.post("/v1/collection-points", headers=auth(demo), json={
        "key": "bad-condition", "name": "이벤트", "kind": "event", "notice_key": "privacy-policy",
        "purposes": [{"key": "marketing-sms", "condition_of_service": True}, "third-party-partners"]})
    problem = assert_problem(response, 422, "invalid-request", "body.purposes[0].condition_of_service")
    assert "16(3)" in problem["detail"] and "22(5)" in problem["detail"]


async def test_pipa_22_5_refusing_a_condition_fails_where_it_is_one_and_costs_nothing_elsewhere(client, auth, demo):
    headers = auth(demo)
    insurance = await form(client, headers, "insurance")
    assert _by_key(insurance)["third-party-insurers"]["required"] is True
    response = await client.post("/v1/subjects/ins-1/consents", headers=headers, json=decisions_for(insurance))
    assert response.status_code == 201, response.text  # required ones granted by the helper
    body = decisions_for(insurance)
    for d in body["decisions"]:
        d["decision"] = "refused"
    response = await client.post("/v1/subjects/ins-2/consents", headers=headers, json=body)
    problem = assert_problem(response, 422, "required-consent-refused")
    assert "22(5)" in problem["errors"][0]["reason"]
    # the same purpose at sign-up is optional: refusing it costs nothing
    assert _by_key(await form(client, headers))["third-party-insurers"]["required"] is False
    assert (await sign_up(client, headers, "ins-3")).status_code == 201
    point = (await client.get("/v1/collection-points/insurance", headers=headers)).json()
    assert point["conditions"] == ["third-party-insurers"]


# --- point 3: separate-consent categories ---------------------------------------------------------


async def test_pipa_22_1_a_purpose_bundling_two_categories_is_refused(client, auth, demo):
    response = await client.post("/v1/purposes", headers=auth(demo), json={
        "key": "bundle", "category": ["collection_use", "marketing"], "disclosures": {"ko": text()}})
    problem = assert_problem(response, 422, "invalid-request", "body.category")
    assert "22(1)" in problem["errors"][0]["reason"]


async def test_pipa_28_8_provision_to_a_recipient_abroad_is_an_overseas_transfer_not_a_third_party_one(
        client, auth, demo):
    headers = auth(demo)
    created = await client.post("/v1/recipients", headers=headers,
                                json={"key": "tokyo-partner", "name": "도쿄 파트너", "country": "JP"})
    assert created.status_code == 201, created.text
    response = await client.post("/v1/purposes", headers=headers, json={
        "key": "tp-abroad", "category": "third_party", "recipient": "tokyo-partner", "disclosures": {"ko": text()}})
    problem = assert_problem(response, 422, "invalid-request", "body.category")
    assert "28-8" in problem["errors"][0]["reason"]
    response = await client.post("/v1/purposes", headers=headers, json={
        "key": "tp-abroad", "category": "overseas_transfer", "recipient": "tokyo-partner",
        "disclosures": {"ko": text()}})
    assert response.status_code == 201, response.text


async def test_pipa_22_1_the_form_groups_consents_by_category(client, auth, demo):
    body = await form(client, auth(demo))
    sections = [s["section"] for s in body["sections"]]
    assert sections == ["without_consent", "collection_use", "third_party", "marketing"]
    by_section = {s["section"]: s for s in body["sections"]}
    assert by_section["third_party"]["purposes"] == ["third-party-insurers", "third-party-partners"]
    assert by_section["third_party"]["article"] == "PIPA Art. 17(1)1"
    assert by_section["marketing"]["title"] == "마케팅·광고성 정보 수신 동의"


async def test_decree_17_4_agree_to_all_records_one_decision_per_item(client, auth, demo):
    headers = auth(demo)
    body = decisions_for(await form(client, headers), all_granted=True)
    body["method"] = "agree_all"
    for d in body["decisions"]:
        if d["purpose"] in ("membership", "fraud-prevention"):
            d["decision"] = "acknowledged"
    response = await client.post("/v1/subjects/all-1/consents", json=body, headers=headers)
    assert response.status_code == 201, response.text
    events = response.json()["events"]
    assert len(events) == len(body["decisions"])
    assert {e["method"] for e in events} == {"agree_all"}
    # "agree to all" that refuses an item is a contradiction, refused whole
    body["decisions"][-1]["decision"] = "refused"
    response = await client.post("/v1/subjects/all-2/consents", json=body, headers=headers)
    assert_problem(response, 422, "consent-rule-violation", f"body.decisions[{len(events) - 1}].decision")


# --- point 2: what existed before stays true --------------------------------------------------------


async def _make_legacy_required(db, tenant: str, key: str) -> None:
    """A purpose as migration 0006 leaves a pre-2023 "required" one: consent, collection and use."""
    await db.execute("UPDATE purposes SET legal_basis = 'consent', category = 'collection_use', kind = 'required' "
                     "WHERE tenant_id = $1 AND key = $2", tenant, key)


async def test_pipa_15_1_4_reclassify_moves_a_legacy_required_consent_to_contract_from_now_on(client, auth, demo, db):
    headers = auth(demo)
    await _make_legacy_required(db, demo, "membership")
    before_form = await form(client, headers)
    assert _by_key(before_form)["membership"]["required"] and _by_key(before_form)["membership"]["checkbox"]
    response = await sign_up(client, headers, "legacy-1")
    assert response.status_code == 201, response.text
    old = next(e for e in response.json()["events"] if e["purpose"] == "membership")
    assert old["action"] == "granted"

    response = await client.post("/v1/purposes/membership/reclassify", headers=auth(demo, sub="privacy-officer"),
                                 json={"legal_basis": "contract", "reason": "PIPC 2024-09-12: contract items need no "
                                                                            "consent"})
    assert response.status_code == 200, response.text
    assert (response.json()["legal_basis"], response.json()["kind"], response.json()["required"]) == \
        ("contract", "disclosed", False)
    history = (await client.get("/v1/purposes/membership/basis-history", headers=headers)).json()
    assert [(h["legal_basis_before"], h["category_before"], h["legal_basis"], h["changed_by"]) for h in history] == \
        [("consent", "collection_use", "contract", "privacy-officer")]
    assert "2024-09-12" in history[0]["reason"]

    # the old event is what it was, and still verifies; new recordings acknowledge
    stored = await db.fetchrow("SELECT action, hash FROM consent_events WHERE id = $1", old["id"])
    assert (stored["action"], stored["hash"]) == ("granted", old["hash"])
    report = (await client.get("/v1/subjects/legacy-1/consents/verify", headers=auth(demo, "audit:read"))).json()
    assert report["valid"], report["breaks"]
    response = await sign_up(client, headers, "legacy-1")
    assert response.status_code == 201, response.text
    new = next(e for e in response.json()["events"] if e["purpose"] == "membership")
    assert (new["action"], new["previous_status"]) == ("acknowledged", "granted")
    # the history is append-only, even to the service's own database account
    import asyncpg
    with pytest.raises(asyncpg.PostgresError):
        await db.execute("DELETE FROM purpose_basis_changes WHERE purpose_id = (SELECT id FROM purposes WHERE "
                         "tenant_id = $1 AND key = 'membership')", demo)


async def test_reclassify_refuses_what_the_law_or_the_catalog_does_not_allow(client, auth, demo):
    headers = auth(demo)
    response = await client.post("/v1/purposes/membership/reclassify", headers=headers,
                                 json={"legal_basis": "contract", "reason": "again"})
    assert_problem(response, 409)  # already contract
    # the insurance collection point makes the insurer provision its condition: it cannot stop being consent
    response = await client.post("/v1/purposes/third-party-insurers/reclassify", headers=headers,
                                 json={"legal_basis": "legitimate_interest", "reason": "try"})
    problem = assert_problem(response, 409)
    assert "insurance" in problem["detail"]
    response = await client.post("/v1/purposes/analytics/reclassify", headers=headers,
                                 json={"legal_basis": "contract", "category": "marketing", "reason": "x"})
    assert_problem(response, 422, "invalid-request", "body.category")


async def test_the_cli_reclassifies_with_who_and_why(client, auth, demo, database_url):
    env = {**os.environ, "DATABASE_URL": database_url}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "app.cli", "catalog", "reclassify", "--tenant", demo,
                               "--purpose", "analytics", *args], env=env, capture_output=True, text=True, timeout=60)

    done = await asyncio.to_thread(cli, "--basis", "legitimate_interest", "--reason", "statistics on our own service",
                                   "--by", "dpo@example")
    assert done.returncode == 0, done.stderr
    assert "now legitimate_interest" in done.stdout
    history = (await client.get("/v1/purposes/analytics/basis-history", headers=auth(demo))).json()
    assert [(h["legal_basis"], h["changed_by"]) for h in history] == [("legitimate_interest", "dpo@example")]
    done = await asyncio.to_thread(cli, "--basis", "legitimate_interest", "--reason", "again")
    assert done.returncode == 1 and "already" in done.stderr


async def test_pipa_15_1_4_a_reclassification_scheduled_for_a_later_date_applies_then(client, auth, demo, runtime_db):
    """Issue 9 point 2, "from a date on": the change is recorded at once, the purpose keeps its basis
    until the date, then the worker (app/catalog/scheduled.py) applies it, once."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from app.catalog.scheduled import apply_due

    headers = auth(demo)
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    response = await client.post("/v1/purposes/analytics/reclassify", headers=headers, json={
        "legal_basis": "legitimate_interest", "reason": "x", "effective_from": past})
    assert_problem(response, 422, "invalid-request", "body.effective_from")

    when = datetime.now(UTC) + timedelta(seconds=2)
    response = await client.post("/v1/purposes/analytics/reclassify", headers=auth(demo, sub="dpo"), json={
        "legal_basis": "legitimate_interest", "reason": "statistics, from the new policy's date",
        "effective_from": when.isoformat()})
    assert response.status_code == 200, response.text
    assert response.json()["legal_basis"] == "consent"  # not yet
    history = (await client.get("/v1/purposes/analytics/basis-history", headers=headers)).json()
    assert [(h["legal_basis"], h["changed_by"]) for h in history] == [("legitimate_interest", "dpo")]
    assert datetime.fromisoformat(history[0]["effective_from"].replace("Z", "+00:00")) == when
    assert [r for r in await apply_due(runtime_db) if r["tenant_id"] == demo] == []  # its date has not come
    assert _by_key(await form(client, headers))["analytics"]["checkbox"] is True

    await asyncio.sleep(max(0.0, (when - datetime.now(UTC)).total_seconds()) + 0.2)
    applied = await apply_due(runtime_db)
    assert [(r["key"], r["legal_basis"]) for r in applied if r["tenant_id"] == demo] == \
        [("analytics", "legitimate_interest")]
    assert [r for r in await apply_due(runtime_db) if r["tenant_id"] == demo] == []  # once
    analytics = _by_key(await form(client, headers))["analytics"]
    assert (analytics["legal_basis"], analytics["checkbox"], analytics["section"]) == \
        ("legitimate_interest", False, "without_consent")
