"""Issue 11 point 5: the form as it was at T, from the catalog's own history, and that history
(who, when, before and after) searchable; nothing escapes it, not even a DBA's UPDATE."""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests.helpers import decisions_for, form


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def _changes(client, headers, **params) -> list[dict]:
    everything, cursor = [], None
    while True:
        page = await client.get("/v1/audit/changes", params={**params, "limit": 3, **({"cursor": cursor} if cursor else {})},
                                headers=headers)
        assert page.status_code == 200, page.text
        everything += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return everything


async def test_the_form_as_of_t_is_exactly_what_it_showed_then(client, auth, demo):
    officer = auth(demo, sub="officer-kim")
    before = await form(client, officer)
    await asyncio.sleep(0.01)
    t1 = _now()
    await asyncio.sleep(0.01)
    # A sign-up on the form as it was, then the wording, the list and the notice change.
    signed = await client.post("/v1/subjects/member-1/consents", headers=officer,
                               json=decisions_for(before, {"marketing-sms"}))
    assert signed.status_code == 201, signed.text
    sms = next(p for p in before["purposes"] if p["key"] == "marketing-sms")
    reworded = copy.deepcopy(sms["disclosures"])
    reworded["ko"]["purpose"] = "신규 공연 및 할인 소식 문자 안내"
    assert (await client.patch("/v1/purposes/marketing-sms", headers=officer,
                               json={"disclosures": reworded})).status_code == 200
    keys = [p["key"] for p in before["purposes"] if p["key"] != "analytics"]
    assert (await client.patch("/v1/collection-points/signup", headers=officer,
                               json={"purposes": keys, "name": "회원가입 (개정)"})).status_code == 200
    notice = await client.post("/v1/notices", headers=officer, json={
        "key": "privacy-policy", "version": "2026-11-23", "title": "개정 방침", "body": "제1조 ...",
        "effective_at": _now(), "publish": True, "force_reason": "the inspection's test"})
    assert notice.status_code == 201, notice.text
    after = await form(client, officer)
    assert after != before and after["notice"]["version"] == "2026-11-23" and after["name"] == "회원가입 (개정)"

    then = await client.get("/v1/collection-points/signup/form", params={"as_of": t1}, headers=officer)
    assert then.status_code == 200, then.text
    assert then.json() == before  # exactly, disclosures, hashes, sections and notice included
    assert (await client.get("/v1/collection-points/signup/form", params={"as_of": _now()},
                             headers=officer)).json() == after
    # The event recorded then names the wording the form at T shows, hash for hash.
    history = (await client.get("/v1/subjects/member-1/consents/history", headers=officer)).json()["items"]
    shown = {p["key"]: p["disclosure_hash"] for p in then.json()["purposes"]}
    assert all(e["disclosure_hash"] == shown[e["purpose"]] for e in history)

    year_ago = (datetime.now(UTC) - timedelta(days=365)).isoformat()
    missing = await client.get("/v1/collection-points/signup/form", params={"as_of": year_ago}, headers=officer)
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    future = await client.get("/v1/collection-points/signup/form",
                              params={"as_of": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}, headers=officer)
    assert future.status_code == 422 and future.json()["errors"][0]["field"] == "query.as_of"
    naive = await client.get("/v1/collection-points/signup/form", params={"as_of": "2026-11-23T10:00:00"},
                             headers=officer)
    assert naive.status_code == 422


async def test_every_change_is_kept_with_who_when_before_and_after(client, auth, demo, new_tenant, db):
    officer, audit = auth(demo, sub="officer-kim"), auth(demo, "audit:read")
    start = _now()
    original = (await client.get("/v1/purposes/analytics", headers=officer)).json()["disclosures"]
    reworded = {**original, "ko": {**original["ko"], "items": ["방문 기록"]}}
    assert (await client.patch("/v1/purposes/analytics", headers=officer,
                               json={"disclosures": reworded})).status_code == 200
    changes = await _changes(client, audit, entity="purposes", key="analytics", changed_from=start)
    assert [(c["op"], c["changed_by"]) for c in changes] == [("update", "officer-kim")]
    assert changes[0]["before"]["disclosures"] == original and changes[0]["after"]["disclosures"] == reworded
    assert changes[0]["before"]["disclosure_hash"] != changes[0]["after"]["disclosure_hash"]

    # The tenant's settings, and a webhook endpoint without its secret.
    assert (await client.put("/v1/settings/duties", headers=officer, json={"reconfirmation_lead_days": 45})
            ).status_code == 200
    settings = await _changes(client, audit, entity="tenant_settings", changed_from=start)
    assert [(c["op"], c["changed_by"], c["after"]["reconfirmation_lead_days"]) for c in settings] == [
        ("insert", "officer-kim", 45)]
    made = await client.post("/v1/webhook-endpoints", headers=officer, json={"url": "http://127.0.0.1:9/hook"})
    assert made.status_code == 201, made.text
    endpoint = await _changes(client, audit, entity="webhook_endpoints", changed_from=start)
    assert [(c["op"], c["changed_by"]) for c in endpoint] == [("insert", "officer-kim")]
    assert made.json()["secret"] not in json.dumps(endpoint) and endpoint[0]["after"]["secret"].startswith("sha256:")

    # Made outside the service (a DBA in psql): kept all the same, and says so.
    await db.execute("""UPDATE purposes SET disclosures = jsonb_set(disclosures, '{ko,purpose}', '"몰래 바꾼 목적"')
                        WHERE tenant_id = $1 AND key = 'analytics'""", demo)
    rogue = (await _changes(client, audit, key="analytics", changed_from=start))[-1]
    assert rogue["changed_by"].startswith("db:") and rogue["after"]["disclosures"]["ko"]["purpose"] == "몰래 바꾼 목적"
    everything = await _changes(client, audit)
    assert {c["entity"] for c in everything} >= {"tenants", "purposes", "collection_points",
                                                  "collection_point_purposes", "notices", "processors",
                                                  "recipients", "tenant_settings"}
    assert [(c["changed_at"], c["id"]) for c in everything] == sorted((c["changed_at"], c["id"]) for c in everything)

    # Nobody rewrites the history; the service's own role cannot even add to it.
    with pytest.raises(asyncpg.PostgresError):
        await db.execute("UPDATE catalog_changes SET changed_by = 'someone else' WHERE tenant_id = $1", demo)
    with pytest.raises(asyncpg.PostgresError):
        await db.execute("DELETE FROM catalog_changes WHERE tenant_id = $1", demo)

    stranger = auth(await new_tenant(), "audit:read")
    assert all(c["entity"] == "tenants" for c in await _changes(client, stranger))
    assert (await client.get("/v1/collection-points/signup/form", params={"as_of": _now()},
                             headers=stranger)).status_code == 404  # another tenant's form, then or now
    assert (await client.get("/v1/collection-points/signup/form", params={"as_of": _now()},
                             headers=audit)).status_code == 200  # an auditor reads the form as it was
    assert (await client.get("/v1/audit/changes", headers=auth(demo, "catalog:read"))).status_code == 403
    assert (await client.get("/v1/audit/changes", params={"entity": "subjects"}, headers=audit)).status_code == 422
    assert (await client.get("/v1/audit/changes", params={"cursor": "x"}, headers=audit)).status_code == 422


async def test_the_runtime_role_cannot_write_the_history(runtime_db, demo):
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await runtime_db.execute(
            "INSERT INTO catalog_changes (tenant_id, entity, entity_id, op, changed_by, db_role, changed_at) "
            "VALUES ($1, 'purposes', 'x', 'insert', 'me', 'me', now())", demo)


async def test_a_change_is_dated_when_it_is_made_in_utc_and_secrets_stay_secret(client, auth, demo, db, database_url):
    officer, audit = auth(demo, sub="officer-kim"), auth(demo, "audit:read")
    live = await form(client, officer)
    # A transaction held open (the service's own account, in Seoul's time zone) changes the wording
    # long after it began: the change is dated when it was made, and the form read in between stands.
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"),
                                 server_settings={"timezone": "Asia/Seoul"})
    try:
        async with conn.transaction():
            await conn.execute("SELECT 1")
            await asyncio.sleep(0.05)
            between = _now()
            await asyncio.sleep(0.05)
            await conn.execute("""UPDATE purposes SET disclosures = jsonb_set(disclosures, '{ko,purpose}', '"늦은 변경"'),
                                  updated_at = now() WHERE tenant_id = $1 AND key = 'analytics'""", demo)
    finally:
        await conn.close()
    assert (await client.get("/v1/collection-points/signup/form", params={"as_of": between},
                             headers=officer)).json() == live
    now = (await client.get("/v1/collection-points/signup/form", params={"as_of": _now()}, headers=officer)).json()
    assert now == await form(client, officer)  # times in UTC, whatever the writer's zone
    (late,) = await _changes(client, audit, key="analytics", changed_from=between)
    assert late["changed_by"].startswith("db:") and late["transaction_at"] < between < late["changed_at"]

    # A webhook endpoint's secret and URL query are kept only as hashes; a rotation still shows.
    endpoint = await db.fetchval(
        "INSERT INTO webhook_endpoints (tenant_id, url, secret) VALUES ($1, 'https://hooks.example/in?token=abc123', "
        "'whsec_first') RETURNING id", demo)
    await db.execute("UPDATE webhook_endpoints SET secret = 'whsec_second' WHERE id = $1", endpoint)
    await db.execute("UPDATE webhook_endpoints SET failing_since = now() WHERE id = $1", endpoint)  # bookkeeping
    changes = await _changes(client, audit, entity="webhook_endpoints", entity_id=str(endpoint))
    assert [c["op"] for c in changes] == ["insert", "update"]
    text = json.dumps(changes)
    assert "abc123" not in text and "whsec_" not in text and "https://hooks.example/in?sha256:" in text
    assert changes[1]["before"]["secret"] != changes[1]["after"]["secret"]

    # A row moved to another key in psql is gone from the old key and new under the other.
    await db.execute("UPDATE collection_points SET key = 'signup-2' WHERE tenant_id = $1 AND key = 'signup'", demo)
    at = _now()
    assert (await client.get("/v1/collection-points/signup/form", params={"as_of": at}, headers=officer)
            ).status_code == 404
    moved = (await client.get("/v1/collection-points/signup-2/form", params={"as_of": at}, headers=officer)).json()
    assert moved == await form(client, officer, "signup-2") and len(moved["purposes"]) == len(live["purposes"])


async def test_a_wording_broken_behind_the_services_back_is_a_409_naming_it(client, auth, demo, db):
    await db.execute("""UPDATE purposes SET disclosures = disclosures || '{"injected": 1}'
                        WHERE tenant_id = $1 AND key = 'analytics'""", demo)
    response = await client.get("/v1/collection-points/signup/form", headers=auth(demo))
    assert response.status_code == 409 and response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == "purposes.analytics.disclosures"
    changes = (await client.get("/v1/audit/changes", params={"key": "analytics", "op": "update"},
                                headers=auth(demo, "audit:read"))).json()["items"]
    assert changes[-1]["after"]["disclosures"]["injected"] == 1 and changes[-1]["changed_by"].startswith("db:")
