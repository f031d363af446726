"""The endpoints API: registration, filters, secrets shown once, rotation, SSRF, isolation, scope."""

from __future__ import annotations

import pytest

PATH = "/v1/webhook-endpoints"


async def _create(client, headers, **fields):
    return await client.post(PATH, json={"url": "http://127.0.0.1:9/hooks", **fields}, headers=headers)


async def test_secret_is_shown_at_creation_only_and_unique(client, auth, tenant):
    headers = auth(tenant, "webhooks:admin")
    first = await _create(client, headers, description="SMS sender", channels=["sms"])
    second = await _create(client, headers)
    assert first.status_code == second.status_code == 201, first.text
    a, b = first.json(), second.json()
    assert a["secret"].startswith("whsec_") and b["secret"].startswith("whsec_") and a["secret"] != b["secret"]
    assert a["kinds"] == ["marketing"] and a["channels"] == ["sms"] and a["enabled"] is True
    listed = (await client.get(PATH, headers=headers)).json()
    one = (await client.get(f"{PATH}/{a['id']}", headers=headers)).json()
    assert [e["id"] for e in listed] == [a["id"], b["id"]]
    for body in (*listed, one):
        assert "secret" not in body and a["secret"] not in str(body)


async def test_processor_link_filters_and_patch(client, auth, tenant, demo):
    headers = auth(tenant, "webhooks:admin")
    created = (await _create(client, headers, processor="alimi", channels=["sms"],
                             event_types=["consent.withdrawn"])).json()
    assert created["processor"] == "alimi" and created["event_types"] == ["consent.withdrawn"]
    patched = await client.patch(f"{PATH}/{created['id']}", headers=headers,
                                 json={"channels": ["sms", "kakao"], "description": "now kakao too"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["channels"] == ["sms", "kakao"] and patched.json()["processor"] == "alimi"
    refused = await client.patch(f"{PATH}/{created['id']}", headers=headers, json={"kinds": None})
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"].startswith("body.kinds")
    unknown = await _create(client, headers, processor="nobody")
    assert unknown.status_code == 404 and unknown.json()["errors"][0]["field"] == "body.processor"


@pytest.mark.parametrize("url, reason", [
    ("http://example.com/hooks", "plain http"),
    ("https://10.0.0.5/hooks", "private"),
    ("https://169.254.169.254/latest/meta-data", "metadata"),
    ("https://[::1]/hooks", "loopback"),
    ("https://user:pw@example.com/hooks", "credentials"),
    ("ftp://example.com/hooks", "scheme"),
])
async def test_unsafe_urls_are_refused_at_registration(client, auth, tenant, url, reason):
    response = await client.post(PATH, json={"url": url}, headers=auth(tenant, "webhooks:admin"))
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["errors"][0]["field"] == "body.url"
    assert reason in problem["errors"][0]["reason"]
    assert not (await client.get(PATH, headers=auth(tenant, "webhooks:admin"))).json()


async def test_patching_to_an_unsafe_url_is_refused(client, auth, tenant):
    headers = auth(tenant, "webhooks:admin")
    created = (await _create(client, headers)).json()
    response = await client.patch(f"{PATH}/{created['id']}", json={"url": "https://192.168.1.1/x"}, headers=headers)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "body.url"
    assert (await client.get(f"{PATH}/{created['id']}", headers=headers)).json()["url"] == created["url"]


async def test_validation_names_the_field(client, auth, tenant):
    headers = auth(tenant, "webhooks:admin")
    response = await _create(client, headers, channels=["fax"], event_types=["consent.deleted"])
    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["errors"]}
    assert {"body.channels.0", "body.event_types.0"} <= fields


async def test_rotation_returns_a_new_secret_once_and_reports_the_grace_period(client, auth, tenant):
    headers = auth(tenant, "webhooks:admin")
    created = (await _create(client, headers)).json()
    rotated = await client.post(f"{PATH}/{created['id']}/rotate-secret", json={"grace_seconds": 600}, headers=headers)
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"] != created["secret"]
    assert rotated.json()["secret_rotation_ends_at"] is not None
    got = (await client.get(f"{PATH}/{created['id']}", headers=headers)).json()
    assert "secret" not in got and got["secret_rotation_ends_at"] == rotated.json()["secret_rotation_ends_at"]


async def test_delete_hides_the_endpoint(client, auth, tenant, db):
    headers = auth(tenant, "webhooks:admin")
    created = (await _create(client, headers)).json()
    assert (await client.delete(f"{PATH}/{created['id']}", headers=headers)).status_code == 204
    assert (await client.get(f"{PATH}/{created['id']}", headers=headers)).status_code == 404
    assert (await client.delete(f"{PATH}/{created['id']}", headers=headers)).status_code == 404
    assert await db.fetchval("SELECT enabled FROM webhook_endpoints WHERE id = $1::uuid", created["id"]) is False


async def test_other_tenants_cannot_see_or_touch_an_endpoint(client, auth, tenant, new_tenant):
    created = (await _create(client, auth(tenant, "webhooks:admin"))).json()
    other = auth(await new_tenant(), "webhooks:admin")
    eid = created["id"]
    not_found = [
        await client.get(f"{PATH}/{eid}", headers=other),
        await client.patch(f"{PATH}/{eid}", json={"enabled": False}, headers=other),
        await client.delete(f"{PATH}/{eid}", headers=other),
        await client.post(f"{PATH}/{eid}/rotate-secret", headers=other),
        await client.post(f"{PATH}/{eid}/test", headers=other),
        await client.post(f"{PATH}/{eid}/recover", json={"since": "2026-01-01T00:00:00Z"}, headers=other),
        await client.get(f"{PATH}/{eid}/deliveries", headers=other),
    ]
    assert [r.status_code for r in not_found] == [404] * len(not_found)
    assert (await client.get(PATH, headers=other)).json() == []
    test = await client.post(f"{PATH}/{eid}/test", headers=auth(tenant, "webhooks:admin"))
    for path in (f"/v1/webhook-deliveries/{test.json()['delivery_id']}",
                 f"/v1/webhook-messages/{test.json()['message_id']}"):
        assert (await client.get(path, headers=other)).status_code == 404
    assert (await client.post(f"/v1/webhook-deliveries/{test.json()['delivery_id']}/retry",
                              headers=other)).status_code == 404


async def test_webhooks_admin_scope_is_required(client, auth, tenant):
    headers = auth(tenant, "consents:write", "catalog:write", "audit:read")
    assert (await _create(client, headers)).status_code == 403
    assert (await client.get(PATH, headers=headers)).status_code == 403


async def test_nul_characters_are_a_clear_422_not_a_500(client, auth, tenant):
    headers = auth(tenant, "webhooks:admin")
    response = await _create(client, headers, description="bad\u0000text")
    assert response.status_code == 422, response.text
    assert response.json()["type"].endswith("invalid-text")
    created = (await _create(client, headers)).json()
    listed = await client.get(f"{PATH}/{created['id']}/deliveries", params={"subject_id": "a\x00b"}, headers=headers)
    assert listed.status_code == 422
    naive = await client.get(f"{PATH}/{created['id']}/deliveries", params={"since": "2026-11-22T00:00:00"},
                             headers=headers)
    assert naive.status_code == 422 and naive.json()["errors"][0]["field"] == "query.since"
