"""Catalog CRUD and validation: every wrong shape is a clear problem+json naming the field."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from tests.helpers import form, sign_up


def text(**over: Any) -> dict[str, Any]:
    value = {"purpose": "이벤트 경품 배송", "items": ["성명", "주소"], "retention": "경품 배송 후 3개월",
             "refusal_right": "동의를 거부할 권리가 있습니다.", "refusal_consequence": "경품을 받을 수 없습니다."}
    value.update(over)
    return value


def purpose(key: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {"key": key, "kind": kind, "disclosures": {"ko": text()}, **extra}


def assert_problem(response: httpx.Response, status: int, type_suffix: str | None = None,
                   field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert problem["title"] and problem["detail"]
    if type_suffix:
        assert problem["type"].endswith(type_suffix), problem["type"]
    if field:
        fields = [e["field"] for e in problem.get("errors") or []]
        assert field in fields, fields
        assert all(e["reason"] for e in problem["errors"])
    return problem


async def purpose_count(db: asyncpg.Connection, tenant: str, key: str) -> int:
    return await db.fetchval("SELECT count(*) FROM purposes WHERE tenant_id = $1 AND key = $2", tenant, key)


# --- purposes: shape rules ---------------------------------------------------------------------


async def test_third_party_purpose_with_recipient_is_created_and_disclosure_names_it(client, auth, demo):
    response = await client.post("/v1/purposes", headers=auth(demo),
                                 json=purpose("tp-new", "third_party", recipient="insurers"))
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["kind"], body["recipient"], body["required"], body["channel"]) == \
        ("third_party", "insurers", False, None)
    assert body["disclosures"]["ko"]["recipient"] == "보험사"  # filled from the registry
    assert len(body["disclosure_hash"]) == 64
    assert (await client.get("/v1/purposes/tp-new", headers=auth(demo))).json() == body


async def test_third_party_without_recipient_is_422(client, auth, demo, db):
    response = await client.post("/v1/purposes", headers=auth(demo), json=purpose("tp-x", "third_party"))
    assert_problem(response, 422, "invalid-request", "body.recipient")
    assert await purpose_count(db, demo, "tp-x") == 0


@pytest.mark.parametrize("kind", ["optional", "sensitive", "marketing"])
async def test_recipient_on_non_third_party_is_422(client, auth, demo, db, kind):
    response = await client.post("/v1/purposes", headers=auth(demo),
                                 json=purpose("not-tp", kind, recipient="insurers"))
    assert_problem(response, 422, "invalid-request", "body.recipient")
    assert await purpose_count(db, demo, "not-tp") == 0


@pytest.mark.parametrize("kind", ["optional", "sensitive", "third_party"])
async def test_channel_on_non_marketing_is_422(client, auth, demo, db, kind):
    extra = {"recipient": "insurers"} if kind == "third_party" else {}
    response = await client.post("/v1/purposes", headers=auth(demo),
                                 json=purpose("chan-x", kind, channel="sms", **extra))
    assert_problem(response, 422, "invalid-request", "body.channel")
    assert await purpose_count(db, demo, "chan-x") == 0


async def test_marketing_with_channel_is_created(client, auth, demo):
    response = await client.post("/v1/purposes", headers=auth(demo),
                                 json=purpose("marketing-phone", "marketing", channel="phone"))
    assert response.status_code == 201, response.text
    assert response.json()["channel"] == "phone"


async def test_unknown_channel_is_422(client, auth, demo):
    response = await client.post("/v1/purposes", headers=auth(demo),
                                 json=purpose("marketing-fax", "marketing", channel="fax"))
    assert_problem(response, 422, "validation-error", "body.channel")


async def test_unknown_recipient_key_is_404(client, auth, demo, db):
    response = await client.post("/v1/purposes", headers=auth(demo),
                                 json=purpose("tp-nobody", "third_party", recipient="nobody"))
    problem = assert_problem(response, 404, "not-found")
    assert "nobody" in problem["detail"]
    assert await purpose_count(db, demo, "tp-nobody") == 0


async def test_disclosed_recipient_must_match_registry(client, auth, demo, db):
    body = purpose("tp-lie", "third_party", recipient="insurers")
    body["disclosures"]["ko"]["recipient"] = "아무개 회사"
    response = await client.post("/v1/purposes", headers=auth(demo), json=body)
    problem = assert_problem(response, 422, "invalid-request", "body.disclosures.ko.recipient")
    assert "보험사" in problem["errors"][0]["reason"]
    assert await purpose_count(db, demo, "tp-lie") == 0


async def test_disclosed_english_recipient_must_match_registry(client, auth, demo):
    body = purpose("tp-lie-en", "third_party", recipient="insurers")
    body["disclosures"]["en"] = text(recipient="Somebody Else Ltd.")
    response = await client.post("/v1/purposes", headers=auth(demo), json=body)
    assert_problem(response, 422, "invalid-request", "body.disclosures.en.recipient")


async def test_empty_disclosed_items_is_a_validation_error(client, auth, demo, db):
    body = purpose("no-items", "optional")
    body["disclosures"]["ko"]["items"] = []
    response = await client.post("/v1/purposes", headers=auth(demo), json=body)
    problem = assert_problem(response, 422, "validation-error")
    assert any("items" in e["field"] for e in problem["errors"]), problem["errors"]
    assert "body.disclosures.ko.items" in [e["field"] for e in problem["errors"]]
    assert await purpose_count(db, demo, "no-items") == 0


@pytest.mark.parametrize("missing", ["purpose", "items", "retention", "refusal_right", "refusal_consequence"])
async def test_every_disclosure_element_is_required(client, auth, demo, missing):
    """PIPA Art. 15(2): purpose, items, retention; for consent also the right to refuse and its cost."""
    body = purpose("half-told", "optional")
    del body["disclosures"]["ko"][missing]
    response = await client.post("/v1/purposes", headers=auth(demo), json=body)
    refusal = missing.startswith("refusal")  # optional in the schema, required for consent by the service
    assert_problem(response, 422, "invalid-request" if refusal else "validation-error",
                   f"body.disclosures.ko.{missing}")


async def test_duplicate_purpose_key_is_409(client, auth, demo, db):
    response = await client.post("/v1/purposes", headers=auth(demo), json=purpose("membership", "optional"))
    assert_problem(response, 409, "conflict", "body.key")
    assert await purpose_count(db, demo, "membership") == 1
    assert (await client.get("/v1/purposes/membership", headers=auth(demo))).json()["kind"] == "disclosed"


@pytest.mark.parametrize(("where", "field"), [
    ("top", "body.colour"), ("disclosures", "body.disclosures.colour"), ("ko", "body.disclosures.ko.colour"),
])
async def test_unknown_fields_are_refused(client, auth, demo, db, where, field):
    body = purpose("extra-field", "optional")
    {"top": body, "disclosures": body["disclosures"], "ko": body["disclosures"]["ko"]}[where]["colour"] = "blue"
    response = await client.post("/v1/purposes", headers=auth(demo), json=body)
    assert_problem(response, 422, "validation-error", field)
    assert await purpose_count(db, demo, "extra-field") == 0


@pytest.mark.parametrize("key", ["Upper", "with space", "-leading-dash", "", "x" * 65, "한글"])
async def test_bad_purpose_key_is_422(client, auth, demo, key):
    response = await client.post("/v1/purposes", headers=auth(demo), json=purpose(key, "optional"))
    assert_problem(response, 422, "validation-error", "body.key")


async def test_unknown_kind_is_422(client, auth, demo):
    response = await client.post("/v1/purposes", headers=auth(demo), json=purpose("odd", "whatever"))
    assert_problem(response, 422, "validation-error", "body.kind")


# --- purposes: updates keep every wording ------------------------------------------------------


async def test_patch_disclosures_changes_hash_keeps_kind_and_keeps_both_wordings(client, auth, demo, db):
    headers = auth(demo)
    before = (await client.get("/v1/purposes/analytics", headers=headers)).json()
    new = {"ko": text(purpose="서비스 개선을 위한 통계 분석 (개정)", items=["서비스 이용기록"])}
    response = await client.patch("/v1/purposes/analytics", headers=headers, json={"disclosures": new})
    assert response.status_code == 200, response.text
    after = response.json()
    assert after["disclosure_hash"] != before["disclosure_hash"]
    assert (after["kind"], after["required"], after["channel"], after["id"]) == \
        (before["kind"], before["required"], before["channel"], before["id"])
    assert after["disclosures"]["ko"]["purpose"] == "서비스 개선을 위한 통계 분석 (개정)"
    assert (await client.get("/v1/purposes/analytics", headers=headers)).json()["disclosure_hash"] == \
        after["disclosure_hash"]
    rows = await db.fetch(
        "SELECT d.hash, d.content FROM purpose_disclosures d JOIN purposes p ON p.id = d.purpose_id "
        "WHERE p.tenant_id = $1 AND p.key = 'analytics'", demo)
    assert {r["hash"] for r in rows} == {before["disclosure_hash"], after["disclosure_hash"]}
    # the form now shows the new wording and hash
    shown = {p["key"]: p for p in (await form(client, headers))["purposes"]}["analytics"]
    assert shown["disclosure_hash"] == after["disclosure_hash"]


async def test_patch_with_same_disclosures_adds_no_snapshot(client, auth, demo, db):
    headers = auth(demo)
    before = (await client.get("/v1/purposes/analytics", headers=headers)).json()
    response = await client.patch("/v1/purposes/analytics", headers=headers,
                                  json={"disclosures": before["disclosures"]})
    assert response.status_code == 200, response.text
    assert response.json()["disclosure_hash"] == before["disclosure_hash"]
    assert await db.fetchval(
        "SELECT count(*) FROM purpose_disclosures d JOIN purposes p ON p.id = d.purpose_id "
        "WHERE p.tenant_id = $1 AND p.key = 'analytics'", demo) == 1


@pytest.mark.parametrize("change", [{"kind": "required"}, {"channel": "sms"}, {"recipient": "insurers"},
                                    {"key": "renamed"}])
async def test_patch_cannot_change_fixed_fields(client, auth, demo, change):
    headers = auth(demo)
    before = (await client.get("/v1/purposes/analytics", headers=headers)).json()
    response = await client.patch("/v1/purposes/analytics", headers=headers, json=change)
    assert_problem(response, 422, "validation-error", f"body.{next(iter(change))}")
    assert (await client.get("/v1/purposes/analytics", headers=headers)).json() == before


async def test_patch_third_party_disclosures_must_still_name_the_recipient(client, auth, demo):
    headers = auth(demo)
    response = await client.patch("/v1/purposes/third-party-insurers", headers=headers,
                                  json={"disclosures": {"ko": text(recipient="다른 회사")}})
    assert_problem(response, 422, "invalid-request", "body.disclosures.ko.recipient")
    ok = await client.patch("/v1/purposes/third-party-insurers", headers=headers,
                            json={"disclosures": {"ko": text()}})
    assert ok.status_code == 200, ok.text
    assert ok.json()["disclosures"]["ko"]["recipient"] == "보험사"
    assert ok.json()["recipient"] == "insurers"


async def test_patch_unknown_purpose_is_404(client, auth, demo):
    assert_problem(await client.patch("/v1/purposes/nope", headers=auth(demo), json={"active": False}),
                   404, "not-found")


# --- notices ----------------------------------------------------------------------------------

NOTICE_BODY = "제1조 (목적)\n이 방침은 개인정보의 처리에 관한 사항을 정합니다.\r\n  끝에 공백  "


def notice(key: str = "event-terms", version: str = "v1", **extra: Any) -> dict[str, Any]:
    return {"key": key, "version": version, "title": "이벤트 약관", "body": NOTICE_BODY,
            "effective_at": "2024-05-01T00:00:00+09:00", **extra}


async def test_notice_lifecycle_draft_patch_publish_then_frozen(client, auth, demo, db):
    headers = auth(demo)
    created = await client.post("/v1/notices", headers=headers, json=notice())
    assert created.status_code == 201, created.text
    draft = created.json()
    assert draft["sha256"] == hashlib.sha256(NOTICE_BODY.encode("utf-8")).hexdigest()
    assert draft["body"] == NOTICE_BODY
    assert draft["published_at"] is None
    notice_id = draft["id"]

    new_body = NOTICE_BODY + "\n제2조 (추가)"
    patched = await client.patch(f"/v1/notices/{notice_id}", headers=headers,
                                 json={"body": new_body, "title": "이벤트 약관 (수정)"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["sha256"] == hashlib.sha256(new_body.encode("utf-8")).hexdigest()
    assert patched.json()["title"] == "이벤트 약관 (수정)"
    title_only = await client.patch(f"/v1/notices/{notice_id}", headers=headers, json={"title": "최종"})
    assert title_only.json()["sha256"] == patched.json()["sha256"]

    published = await client.post(f"/v1/notices/{notice_id}/publish", headers=headers)
    assert published.status_code == 200, published.text
    assert published.json()["published_at"] is not None
    frozen = published.json()

    assert_problem(await client.patch(f"/v1/notices/{notice_id}", headers=headers, json={"title": "again"}),
                   409, "conflict")
    assert_problem(await client.patch(f"/v1/notices/{notice_id}", headers=headers, json={"body": "new"}),
                   409, "conflict")
    assert_problem(await client.delete(f"/v1/notices/{notice_id}", headers=headers), 409, "conflict")
    assert_problem(await client.post(f"/v1/notices/{notice_id}/publish", headers=headers), 409, "conflict")
    assert (await client.get(f"/v1/notices/{notice_id}", headers=headers)).json() == frozen
    listed = {n["id"]: n for n in (await client.get("/v1/notices", headers=headers)).json()}
    assert listed[notice_id]["sha256"] == frozen["sha256"]
    assert "body" not in listed[notice_id]


async def test_database_refuses_changing_a_published_notice(client, auth, demo, db):
    published = (await form(client, auth(demo)))["notice"]
    notice_id = uuid.UUID(published["id"])
    with pytest.raises(asyncpg.PostgresError, match="immutable"):
        await db.execute("UPDATE notices SET body = 'rewritten' WHERE id = $1", notice_id)
    with pytest.raises(asyncpg.PostgresError, match="immutable"):
        await db.execute("UPDATE notices SET published_at = NULL WHERE id = $1", notice_id)
    with pytest.raises(asyncpg.PostgresError, match="immutable"):
        await db.execute("DELETE FROM notices WHERE id = $1", notice_id)
    assert await db.fetchval("SELECT sha256 FROM notices WHERE id = $1", notice_id) == published["sha256"]


async def test_database_allows_changing_a_draft_notice(client, auth, demo, db):
    draft = (await client.post("/v1/notices", headers=auth(demo), json=notice())).json()
    await db.execute("UPDATE notices SET title = 'raw edit' WHERE id = $1", uuid.UUID(draft["id"]))
    assert (await client.get(f"/v1/notices/{draft['id']}", headers=auth(demo))).json()["title"] == "raw edit"


async def test_draft_notice_can_be_deleted(client, auth, demo):
    headers = auth(demo)
    draft = (await client.post("/v1/notices", headers=headers, json=notice())).json()
    assert (await client.delete(f"/v1/notices/{draft['id']}", headers=headers)).status_code == 204
    assert_problem(await client.get(f"/v1/notices/{draft['id']}", headers=headers), 404, "not-found")


async def test_notice_created_published(client, auth, demo):
    response = await client.post("/v1/notices", headers=auth(demo), json=notice(publish=True))
    assert response.status_code == 201, response.text
    assert response.json()["published_at"] is not None
    assert_problem(await client.patch(f"/v1/notices/{response.json()['id']}", headers=auth(demo),
                                      json={"title": "x"}), 409, "conflict")


async def test_duplicate_notice_version_is_409(client, auth, demo):
    headers = auth(demo)
    assert (await client.post("/v1/notices", headers=headers, json=notice())).status_code == 201
    assert_problem(await client.post("/v1/notices", headers=headers, json=notice()), 409, "conflict", "body.version")
    assert (await client.post("/v1/notices", headers=headers, json=notice(version="v2"))).status_code == 201


async def test_notice_effective_at_needs_an_offset(client, auth, demo):
    response = await client.post("/v1/notices", headers=auth(demo),
                                 json=notice(effective_at="2024-05-01T00:00:00"))
    assert_problem(response, 422, "validation-error", "body.effective_at")


async def test_notice_unknown_field_is_422(client, auth, demo):
    response = await client.post("/v1/notices", headers=auth(demo), json=notice(sha256="0" * 64))
    assert_problem(response, 422, "validation-error", "body.sha256")


async def test_unknown_notice_is_404(client, auth, demo):
    assert_problem(await client.get(f"/v1/notices/{uuid.uuid4()}", headers=auth(demo)), 404, "not-found")


async def test_malformed_notice_id_is_422(client, auth, demo):
    assert_problem(await client.get("/v1/notices/not-a-uuid", headers=auth(demo)), 422, "validation-error",
                   "path.notice_id")


# --- collection points ------------------------------------------------------------------------


def point(key: str, purposes: list[str], notice_key: str = "privacy-policy", **extra: Any) -> dict[str, Any]:
    return {"key": key, "name": "이벤트 응모", "kind": "event", "notice_key": notice_key, "purposes": purposes,
            **extra}


async def test_collection_point_with_unknown_purposes_is_422(client, auth, demo, db):
    response = await client.post("/v1/collection-points", headers=auth(demo),
                                 json=point("cp-bad", ["membership", "nope", "analytics", "nada"]))
    problem = assert_problem(response, 422, "invalid-request")
    assert sorted(e["field"] for e in problem["errors"]) == ["body.purposes[1]", "body.purposes[3]"]
    assert await db.fetchval("SELECT count(*) FROM collection_points WHERE tenant_id = $1 AND key = 'cp-bad'",
                             demo) == 0


async def test_collection_point_listing_a_purpose_twice_is_422(client, auth, demo):
    response = await client.post("/v1/collection-points", headers=auth(demo),
                                 json=point("cp-dup", ["analytics", "analytics"]))
    assert_problem(response, 422, "invalid-request", "body.purposes")


async def test_collection_point_without_purposes_is_422(client, auth, demo):
    response = await client.post("/v1/collection-points", headers=auth(demo), json=point("cp-empty", []))
    assert_problem(response, 422, "validation-error", "body.purposes")


async def test_collection_point_with_inactive_purpose_is_422(client, auth, demo):
    headers = auth(demo)
    assert (await client.patch("/v1/purposes/analytics", headers=headers, json={"active": False})).status_code == 200
    response = await client.post("/v1/collection-points", headers=headers, json=point("cp-off", ["analytics"]))
    assert_problem(response, 422, "invalid-request", "body.purposes[0]")


async def test_form_needs_a_published_notice_in_force(client, auth, demo):
    headers = auth(demo)
    created = await client.post("/v1/collection-points", headers=headers,
                                json=point("cp-event", ["marketing"], notice_key="event-terms"))
    assert created.status_code == 201, created.text
    url = "/v1/collection-points/cp-event/form"
    assert_problem(await client.get(url, headers=headers), 409, "conflict")

    draft = (await client.post("/v1/notices", headers=headers, json=notice())).json()
    assert_problem(await client.get(url, headers=headers), 409, "conflict")  # a draft is not in force

    future = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    later = await client.post("/v1/notices", headers=headers,
                              json=notice(version="v-future", effective_at=future, publish=True))
    assert later.status_code == 201, later.text
    assert_problem(await client.get(url, headers=headers), 409, "conflict")  # announced, not yet in force

    assert (await client.post(f"/v1/notices/{draft['id']}/publish", headers=headers)).status_code == 200
    response = await client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["notice"]["id"] == draft["id"]
    assert response.json()["notice"]["version"] == "v1"


async def test_form_shows_purposes_in_configured_order_all_unchecked(client, auth, demo):
    headers = auth(demo)
    order = ["marketing-email", "membership", "third-party-partners", "analytics", "marketing-night"]
    created = await client.post("/v1/collection-points", headers=headers, json=point("cp-order", order))
    assert created.status_code == 201, created.text
    assert created.json()["purposes"] == order
    assert (await client.get("/v1/collection-points/cp-order", headers=headers)).json()["purposes"] == order

    body = await form(client, headers, "cp-order")
    assert body["collection_point"] == "cp-order"
    assert [p["key"] for p in body["purposes"]] == order
    assert all(p["checked"] is False for p in body["purposes"])
    by_key = {p["key"]: p for p in body["purposes"]}
    assert (by_key["membership"]["required"], by_key["membership"]["checkbox"]) == (False, False)  # contract
    assert (by_key["marketing-email"]["required"], by_key["marketing-email"]["checkbox"]) == (False, True)
    assert by_key["third-party-partners"]["recipient"]["key"] == "partners"
    assert by_key["marketing-night"]["channel"] == "night"

    reordered = list(reversed(order))
    patched = await client.patch("/v1/collection-points/cp-order", headers=headers, json={"purposes": reordered})
    assert patched.status_code == 200, patched.text
    assert patched.json()["purposes"] == reordered
    assert [p["key"] for p in (await form(client, headers, "cp-order"))["purposes"]] == reordered


async def test_collection_point_patch_with_unknown_purpose_changes_nothing(client, auth, demo):
    headers = auth(demo)
    before = (await client.get("/v1/collection-points/preferences", headers=headers)).json()
    response = await client.patch("/v1/collection-points/preferences", headers=headers,
                                  json={"purposes": ["marketing", "nope"], "name": "바뀐 이름"})
    assert_problem(response, 422, "invalid-request", "body.purposes[1]")
    assert (await client.get("/v1/collection-points/preferences", headers=headers)).json() == before


async def test_duplicate_collection_point_key_is_409(client, auth, demo):
    response = await client.post("/v1/collection-points", headers=auth(demo), json=point("signup", ["analytics"]))
    assert_problem(response, 409, "conflict", "body.key")


async def test_unknown_collection_point_kind_is_422(client, auth, demo):
    response = await client.post("/v1/collection-points", headers=auth(demo),
                                 json=point("cp-kind", ["analytics"], kind="billboard"))
    assert_problem(response, 422, "validation-error", "body.kind")


async def test_collection_point_used_by_consents_cannot_be_deleted(client, auth, demo, db):
    headers = auth(demo)
    assert (await sign_up(client, headers, "member-1")).status_code == 201
    assert_problem(await client.delete("/v1/collection-points/signup", headers=headers), 409, "conflict")
    assert (await client.get("/v1/collection-points/signup", headers=headers)).status_code == 200
    assert len((await form(client, headers))["purposes"]) == 11  # its purpose list survived too


async def test_unused_collection_point_can_be_deleted(client, auth, demo, db):
    headers = auth(demo)
    assert (await client.delete("/v1/collection-points/preferences", headers=headers)).status_code == 204
    assert_problem(await client.get("/v1/collection-points/preferences", headers=headers), 404, "not-found")
    assert_problem(await client.get("/v1/collection-points/preferences/form", headers=headers), 404, "not-found")
    assert await db.fetchval(
        "SELECT count(*) FROM collection_point_purposes cpp LEFT JOIN collection_points cp "
        "ON cp.id = cpp.collection_point_id WHERE cp.id IS NULL") == 0


# --- recipients and processors ----------------------------------------------------------------


async def test_recipient_crud(client, auth, demo):
    headers = auth(demo)
    created = await client.post("/v1/recipients", headers=headers, json={
        "key": "travel-partner", "name": "여행 제휴사", "name_en": "Travel partner", "contact": "privacy@example.com"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["key"], body["name"], body["country"]) == ("travel-partner", "여행 제휴사", "KR")
    assert "travel-partner" in [r["key"] for r in (await client.get("/v1/recipients", headers=headers)).json()]
    assert (await client.get("/v1/recipients/travel-partner", headers=headers)).json() == body

    patched = await client.patch("/v1/recipients/travel-partner", headers=headers,
                                 json={"name": "여행 제휴 협력사", "country": "JP"})
    assert patched.status_code == 200, patched.text
    assert (patched.json()["name"], patched.json()["country"], patched.json()["name_en"]) == \
        ("여행 제휴 협력사", "JP", "Travel partner")
    assert patched.json()["updated_at"] >= body["updated_at"]
    assert (await client.get("/v1/recipients/travel-partner", headers=headers)).json() == patched.json()

    assert (await client.delete("/v1/recipients/travel-partner", headers=headers)).status_code == 204
    assert_problem(await client.get("/v1/recipients/travel-partner", headers=headers), 404, "not-found")
    assert_problem(await client.delete("/v1/recipients/travel-partner", headers=headers), 404, "not-found")


async def test_recipient_validation(client, auth, demo):
    headers = auth(demo)
    assert_problem(await client.post("/v1/recipients", headers=headers, json={"key": "insurers", "name": "중복"}),
                   409, "conflict", "body.key")
    assert_problem(await client.post("/v1/recipients", headers=headers,
                                     json={"key": "r-1", "name": "x", "country": "korea"}),
                   422, "validation-error", "body.country")
    assert_problem(await client.post("/v1/recipients", headers=headers, json={"key": "r-2"}),
                   422, "validation-error", "body.name")
    assert_problem(await client.post("/v1/recipients", headers=headers,
                                     json={"key": "r-3", "name": "x", "tenant_id": "someone-else"}),
                   422, "validation-error", "body.tenant_id")
    assert_problem(await client.patch("/v1/recipients/insurers", headers=headers, json={"key": "renamed"}),
                   422, "validation-error", "body.key")
    assert_problem(await client.patch("/v1/recipients/nobody", headers=headers, json={"name": "x"}),
                   404, "not-found")


async def test_recipient_referenced_by_a_purpose_cannot_be_deleted(client, auth, demo):
    headers = auth(demo)
    assert_problem(await client.delete("/v1/recipients/insurers", headers=headers), 409, "conflict")
    assert (await client.get("/v1/recipients/insurers", headers=headers)).status_code == 200
    assert (await client.get("/v1/purposes/third-party-insurers", headers=headers)).json()["recipient"] == "insurers"


async def test_processor_crud(client, auth, demo):
    headers = auth(demo)
    listed = (await client.get("/v1/processors", headers=headers)).json()
    assert [p["key"] for p in listed] == sorted(p["key"] for p in listed)
    assert {"danal", "stibee", "kt-hitel"} <= {p["key"] for p in listed}

    created = await client.post("/v1/processors", headers=headers, json={
        "key": "cloud-host", "name": "클라우드 호스팅", "task": "서버 운영", "country": "US"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["task"], body["country"], body["task_en"]) == ("서버 운영", "US", None)
    assert (await client.get("/v1/processors/cloud-host", headers=headers)).json() == body

    patched = await client.patch("/v1/processors/cloud-host", headers=headers, json={"task_en": "Hosting"})
    assert patched.status_code == 200, patched.text
    assert (patched.json()["task"], patched.json()["task_en"]) == ("서버 운영", "Hosting")

    assert (await client.delete("/v1/processors/cloud-host", headers=headers)).status_code == 204
    assert_problem(await client.get("/v1/processors/cloud-host", headers=headers), 404, "not-found")


async def test_processor_validation(client, auth, demo):
    headers = auth(demo)
    assert_problem(await client.post("/v1/processors", headers=headers,
                                     json={"key": "danal", "name": "dup", "task": "x"}), 409, "conflict", "body.key")
    assert_problem(await client.post("/v1/processors", headers=headers, json={"key": "p-1", "name": "x"}),
                   422, "validation-error", "body.task")
    assert_problem(await client.post("/v1/processors", headers=headers,
                                     json={"key": "p-2", "name": "x", "task": "y", "webhook": "http://x"}),
                   422, "validation-error", "body.webhook")
    assert_problem(await client.post("/v1/processors", headers=headers,
                                     json={"key": "p-3", "name": "   ", "task": "y"}),
                   422, "validation-error", "body.name")


# --- catalog changes must not silently desynchronise what is shown -----------------------------


async def test_patch_null_on_a_required_field_is_refused_not_ignored(client, auth, demo):
    """PATCH {"name": null} is either an error or a change, never a silent no-op 200."""
    headers = auth(demo)
    before = (await client.get("/v1/recipients/partners", headers=headers)).json()
    response = await client.patch("/v1/recipients/partners", headers=headers, json={"name": None})
    assert_problem(response, 422, field="body.name")
    assert (await client.get("/v1/recipients/partners", headers=headers)).json() == before


async def test_renaming_a_recipient_keeps_the_form_disclosure_consistent(client, auth, demo):
    """Invariant 4: the recipient a third-party form discloses must be the catalog's recipient. Renaming
    a recipient that purposes disclose must either be refused or carry through to what the form shows."""
    headers = auth(demo)
    response = await client.patch("/v1/recipients/insurers", headers=headers, json={"name": "새 보험사"})
    if response.status_code == 200:
        shown = {p["key"]: p for p in (await form(client, headers))["purposes"]}["third-party-insurers"]
        assert shown["disclosures"]["ko"]["recipient"] == shown["recipient"]["name"], shown
    else:
        assert_problem(response, 409, "conflict")


async def test_deactivated_purpose_is_no_longer_presented(client, auth, demo):
    """A purpose that may not be put on a collection point (inactive) must not keep appearing on
    existing forms either; deactivating a presented purpose is refused or takes it off the form."""
    headers = auth(demo)
    response = await client.patch("/v1/purposes/analytics", headers=headers, json={"active": False})
    if response.status_code == 200:
        assert "analytics" not in [p["key"] for p in (await form(client, headers))["purposes"]]
    else:
        assert_problem(response, 409, "conflict")


async def test_listing_collection_points_shows_each_points_purposes_in_order(client, auth, demo):
    headers = auth(demo)
    listed = {p["key"]: p["purposes"] for p in (await client.get("/v1/collection-points", headers=headers)).json()}
    for key in ("signup", "preferences"):
        form = (await client.get(f"/v1/collection-points/{key}/form", headers=headers)).json()
        assert listed[key] == [p["key"] for p in form["purposes"]]
    assert listed["preferences"][0] == "marketing" and "membership" not in listed["preferences"]
