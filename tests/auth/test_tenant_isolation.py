"""Two tenants with the same demo catalog: a caller of tenant A can neither read, write nor detect
anything of tenant B. A hidden row answers exactly like a row that does not exist."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.demo.loader import load_tenant
from app.demo.tenants import SMALLTICKET
from tests.helpers import decisions_for, form, sign_up


@pytest.fixture
async def tenant_b(app: Any) -> str:
    """A second tenant with its own copy of the smallticket demo catalog (same keys as A's)."""
    tenant_id = f"t-{uuid.uuid4().hex[:12]}"
    spec = {**SMALLTICKET, "tenant": {**SMALLTICKET["tenant"], "id": tenant_id}}
    async with app.state.sessions() as session, session.begin():
        assert await load_tenant(session, spec)
    return tenant_id


@dataclass
class World:
    a: str
    b: str
    ha: dict[str, str]
    hb: dict[str, str]


@pytest.fixture
async def world(client, auth, demo, tenant_b) -> World:
    w = World(a=demo, b=tenant_b, ha=auth(demo), hb=auth(tenant_b))
    assert (await sign_up(client, w.ha, "shared-id", granted={"marketing", "marketing-sms"})).status_code == 201
    assert (await sign_up(client, w.hb, "only-in-b", granted={"marketing", "marketing-email"})).status_code == 201
    return w


def _ghost(hidden: str) -> str:
    try:
        uuid.UUID(hidden)
        return str(uuid.uuid4())
    except ValueError:
        return f"ghost-{uuid.uuid4().hex[:8]}"


async def assert_indistinguishable_404(client: httpx.AsyncClient, headers: dict[str, str], method: str,
                                       template: str, hidden: str, body: Any = None) -> None:
    """`template` (and "{id}" in `body`) with B's id answers exactly as with an id nobody has: same status, headers' media
    type, type, title, and detail/instance/errors identical once the id is blanked out."""
    ghost = _ghost(hidden)

    def fill(value: str) -> tuple[str, Any]:
        filled = None if body is None else json.loads(json.dumps(body).replace("{id}", value))
        return template.format(id=value), filled

    seen_path, seen_body = fill(hidden)
    unseen_path, unseen_body = fill(ghost)
    seen = await client.request(method, seen_path, headers=headers, json=seen_body)
    unseen = await client.request(method, unseen_path, headers=headers, json=unseen_body)
    assert seen.status_code == unseen.status_code == 404, (seen.text, unseen.text)
    assert seen.headers["content-type"] == unseen.headers["content-type"] == "application/problem+json"
    p_seen, p_unseen = seen.json(), unseen.json()
    assert p_seen["type"] == p_unseen["type"]
    assert p_seen["type"].endswith("not-found")
    assert p_seen["title"] == p_unseen["title"]
    assert json.dumps(p_seen, sort_keys=True).replace(hidden, "<id>") == \
        json.dumps(p_unseen, sort_keys=True).replace(ghost, "<id>")


async def _history(client, headers, subject) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/subjects/{subject}/consents/history", headers=headers,
                                params={"limit": 500})
    assert response.status_code == 200, response.text
    return response.json()["items"]


# --- subjects and consents -------------------------------------------------------------------


@pytest.mark.parametrize("template", [
    "/v1/subjects/{id}/consents",
    "/v1/subjects/{id}/consents?as_of=2030-01-01T00:00:00Z",
    "/v1/subjects/{id}/consents/history",
    "/v1/subjects/{id}/consents/verify",
])
async def test_a_cannot_read_or_detect_b_subject(client, world, template):
    await assert_indistinguishable_404(client, world.ha, "GET", template, "only-in-b")
    # control: B reads its own subject on the same route
    assert (await client.get(template.format(id="only-in-b"), headers=world.hb)).status_code == 200


async def test_a_cannot_withdraw_b_subject(client, world):
    before = await _history(client, world.hb, "only-in-b")
    await assert_indistinguishable_404(client, world.ha, "POST", "/v1/subjects/{id}/consents/marketing-email/withdraw",
                                       "only-in-b")
    await assert_indistinguishable_404(client, world.ha, "POST", "/v1/subjects/{id}/consents/withdraw",
                                       "only-in-b", {"kind": "marketing"})
    await assert_indistinguishable_404(client, world.ha, "POST", "/v1/subjects/{id}/consents/withdraw",
                                       "only-in-b", {"purposes": ["marketing-email"]})
    assert await _history(client, world.hb, "only-in-b") == before
    state = (await client.get("/v1/subjects/only-in-b/consents", headers=world.hb)).json()
    assert {c["purpose"]: c["status"] for c in state["consents"]}["marketing-email"] == "granted"


async def test_subject_ids_are_per_tenant(client, world, db):
    # B also has a "shared-id", recorded after A's, with different choices
    assert (await sign_up(client, world.hb, "shared-id", granted={"analytics"})).status_code == 201
    a_history = await _history(client, world.ha, "shared-id")
    b_history = await _history(client, world.hb, "shared-id")
    assert len(a_history) == len(b_history) == 11
    assert not {e["id"] for e in a_history} & {e["id"] for e in b_history}
    a_notice = (await form(client, world.ha))["notice"]["id"]
    b_notice = (await form(client, world.hb))["notice"]["id"]
    assert a_notice != b_notice
    assert {e["notice"]["id"] for e in a_history} == {a_notice}
    assert {e["notice"]["id"] for e in b_history} == {b_notice}
    assert [e["seq"] for e in b_history] == [e["seq"] for e in a_history]  # B's chain did not continue A's
    assert b_history[0]["prev_hash"] == a_history[0]["prev_hash"]  # both chains start from genesis

    # A records more for its "shared-id"; B's "shared-id" does not move
    b_state_before = (await client.get("/v1/subjects/shared-id/consents", headers=world.hb)).json()
    withdrawn = await client.post("/v1/subjects/shared-id/consents/marketing-sms/withdraw", headers=world.ha)
    assert withdrawn.status_code == 200, withdrawn.text
    assert withdrawn.json()["results"][0]["changed"] is True
    again = await sign_up(client, world.ha, "shared-id", granted={"marketing", "marketing-kakao"})
    assert again.status_code == 201, again.text
    assert (await client.get("/v1/subjects/shared-id/consents", headers=world.hb)).json() == b_state_before
    assert await _history(client, world.hb, "shared-id") == b_history
    a_state = {c["purpose"]: c["status"] for c in
               (await client.get("/v1/subjects/shared-id/consents", headers=world.ha)).json()["consents"]}
    b_state = {c["purpose"]: c["status"] for c in b_state_before["consents"]}
    assert (a_state["marketing-kakao"], b_state["marketing-kakao"]) == ("granted", "refused")
    assert (a_state["analytics"], b_state["analytics"]) == ("refused", "granted")

    rows = await db.fetch("SELECT tenant_id FROM subjects WHERE external_id = 'shared-id' AND tenant_id = ANY($1)",
                          [world.a, world.b])
    assert sorted(r["tenant_id"] for r in rows) == sorted([world.a, world.b])
    for headers in (world.ha, world.hb):
        chain = await client.get("/v1/subjects/shared-id/consents/verify", headers=headers)
        assert chain.json()["valid"] is True


async def test_a_recording_for_b_only_subject_creates_a_separate_a_subject(client, world):
    before = await _history(client, world.hb, "only-in-b")
    response = await sign_up(client, world.ha, "only-in-b")
    assert response.status_code == 201, response.text
    assert await _history(client, world.hb, "only-in-b") == before
    assert len(await _history(client, world.ha, "only-in-b")) == 11


async def test_a_cannot_record_with_b_notice(client, world, db):
    b_notice = (await form(client, world.hb))["notice"]["id"]
    body = decisions_for(await form(client, world.ha))
    answers = []
    for notice_id in (b_notice, str(uuid.uuid4())):
        body["notice_id"] = notice_id
        response = await client.post("/v1/subjects/notice-probe/consents", json=body, headers=world.ha)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "body.notice_id"
        answers.append({k: v for k, v in response.json().items()})
    assert answers[0] == answers[1]  # B's notice id is indistinguishable from a random one
    assert await db.fetchval(
        "SELECT count(*) FROM subjects WHERE tenant_id = $1 AND external_id = 'notice-probe'", world.a) == 0


async def test_a_cannot_record_on_b_collection_point(client, world):
    point = {"key": "b-point", "name": "B only", "kind": "event", "notice_key": "privacy-policy",
             "purposes": ["analytics"]}
    assert (await client.post("/v1/collection-points", json=point, headers=world.hb)).status_code == 201
    b_form = await form(client, world.hb, "b-point")
    body = decisions_for(b_form)
    response = await client.post("/v1/subjects/shared-id/consents", json=body, headers=world.ha)
    assert response.status_code == 404, response.text
    assert response.json()["errors"][0]["field"] == "body.collection_point"


async def test_idempotency_keys_are_per_tenant(client, world):
    key = {"Idempotency-Key": f"idem-{uuid.uuid4()}"}
    first = await sign_up_with_headers(client, {**world.ha, **key}, world.ha, "idem-subject")
    second = await sign_up_with_headers(client, {**world.hb, **key}, world.hb, "idem-subject")
    assert first.status_code == second.status_code == 201, (first.text, second.text)
    assert "idempotent-replayed" not in second.headers
    assert first.json()["request_id"] != second.json()["request_id"]
    assert len(await _history(client, world.hb, "idem-subject")) == 11


async def sign_up_with_headers(client, headers, form_headers, subject):
    body = decisions_for(await form(client, form_headers))
    return await client.post(f"/v1/subjects/{subject}/consents", json=body, headers=headers)


async def test_history_purpose_filter_cannot_probe_b_purposes(client, world):
    purpose = {"key": "b-only", "kind": "optional", "disclosures": {"ko": _text()}}
    assert (await client.post("/v1/purposes", json=purpose, headers=world.hb)).status_code == 201
    await assert_indistinguishable_404(client, world.ha, "GET",
                                       "/v1/subjects/shared-id/consents/history?purpose={id}", "b-only")


# --- catalog ---------------------------------------------------------------------------------


def _text(**over: Any) -> dict[str, Any]:
    text = {"purpose": "B 전용 목적", "items": ["이메일"], "retention": "1년", "refusal_right": "거부할 수 있습니다.",
            "refusal_consequence": "불이익이 없습니다."}
    text.update(over)
    return text


def _ids(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text
    return {row["id"] for row in response.json()}


async def test_purposes_are_per_tenant(client, world, db):
    created = await client.post("/v1/purposes", headers=world.hb,
                                json={"key": "b-only", "kind": "optional", "disclosures": {"ko": _text()}})
    assert created.status_code == 201, created.text
    a_list = await client.get("/v1/purposes", headers=world.ha)
    assert "b-only" not in {p["key"] for p in a_list.json()}
    a_ids, b_ids = _ids(a_list), _ids(await client.get("/v1/purposes", headers=world.hb))
    assert not a_ids & b_ids
    db_ids = {str(r["id"]) for r in await db.fetch("SELECT id FROM purposes WHERE tenant_id = $1", world.a)}
    assert a_ids == db_ids

    await assert_indistinguishable_404(client, world.ha, "GET", "/v1/purposes/{id}", "b-only")
    await assert_indistinguishable_404(client, world.ha, "PATCH", "/v1/purposes/{id}", "b-only", {"active": False})
    assert (await client.get("/v1/purposes/b-only", headers=world.hb)).json()["active"] is True

    # A may use the same key for its own purpose: no 409 reveals B's
    mine = await client.post("/v1/purposes", headers=world.ha, json={
        "key": "b-only", "kind": "marketing", "channel": "push", "disclosures": {"ko": _text(purpose="A의 목적")}})
    assert mine.status_code == 201, mine.text
    assert (await client.get("/v1/purposes/b-only", headers=world.hb)).json()["kind"] == "optional"


async def test_a_patching_a_shared_key_changes_only_its_own_purpose(client, world):
    b_before = (await client.get("/v1/purposes/analytics", headers=world.hb)).json()
    patched = await client.patch("/v1/purposes/analytics", headers=world.ha,
                                 json={"disclosures": {"ko": _text(purpose="A가 바꾼 문구")}})
    assert patched.status_code == 200, patched.text
    assert (await client.get("/v1/purposes/analytics", headers=world.hb)).json() == b_before


async def test_recipients_are_per_tenant(client, world):
    created = await client.post("/v1/recipients", headers=world.hb, json={"key": "b-rcpt", "name": "B 수령인"})
    assert created.status_code == 201, created.text
    a_list = await client.get("/v1/recipients", headers=world.ha)
    assert "b-rcpt" not in {r["key"] for r in a_list.json()}
    assert not _ids(a_list) & _ids(await client.get("/v1/recipients", headers=world.hb))
    await assert_indistinguishable_404(client, world.ha, "GET", "/v1/recipients/{id}", "b-rcpt")
    await assert_indistinguishable_404(client, world.ha, "PATCH", "/v1/recipients/{id}", "b-rcpt", {"name": "x"})
    await assert_indistinguishable_404(client, world.ha, "DELETE", "/v1/recipients/{id}", "b-rcpt")
    # A cannot bind its third-party purpose to B's recipient
    await assert_indistinguishable_404(client, world.ha, "POST", "/v1/purposes", "b-rcpt", {
        "key": "tp-probe", "kind": "third_party", "recipient": "{id}", "disclosures": {"ko": _text()}})
    still = await client.get("/v1/recipients/b-rcpt", headers=world.hb)
    assert still.status_code == 200 and still.json()["name"] == "B 수령인"


async def test_processors_are_per_tenant(client, world):
    created = await client.post("/v1/processors", headers=world.hb,
                                json={"key": "b-proc", "name": "B 수탁사", "task": "발송"})
    assert created.status_code == 201, created.text
    a_list = await client.get("/v1/processors", headers=world.ha)
    assert "b-proc" not in {p["key"] for p in a_list.json()}
    assert not _ids(a_list) & _ids(await client.get("/v1/processors", headers=world.hb))
    await assert_indistinguishable_404(client, world.ha, "GET", "/v1/processors/{id}", "b-proc")
    await assert_indistinguishable_404(client, world.ha, "PATCH", "/v1/processors/{id}", "b-proc", {"task": "x"})
    await assert_indistinguishable_404(client, world.ha, "DELETE", "/v1/processors/{id}", "b-proc")
    still = await client.get("/v1/processors/b-proc", headers=world.hb)
    assert still.status_code == 200 and still.json()["task"] == "발송"


async def test_notices_are_per_tenant(client, world):
    draft = await client.post("/v1/notices", headers=world.hb, json={
        "key": "b-terms", "version": "1", "title": "B 약관", "body": "B 약관 본문",
        "effective_at": "2024-01-01T00:00:00+09:00"})
    assert draft.status_code == 201, draft.text
    draft_id = draft.json()["id"]
    b_published = (await form(client, world.hb))["notice"]["id"]

    a_list = await client.get("/v1/notices", headers=world.ha)
    assert not _ids(a_list) & {draft_id, b_published}
    assert not _ids(a_list) & _ids(await client.get("/v1/notices", headers=world.hb))
    for notice_id in (draft_id, b_published):
        await assert_indistinguishable_404(client, world.ha, "GET", "/v1/notices/{id}", notice_id)
        await assert_indistinguishable_404(client, world.ha, "PATCH", "/v1/notices/{id}", notice_id,
                                           {"title": "A was here"})
        await assert_indistinguishable_404(client, world.ha, "POST", "/v1/notices/{id}/publish", notice_id)
        await assert_indistinguishable_404(client, world.ha, "DELETE", "/v1/notices/{id}", notice_id)
    after = (await client.get(f"/v1/notices/{draft_id}", headers=world.hb)).json()
    assert after["published_at"] is None
    assert after["title"] == "B 약관"

    # the same key and version are free in A
    mine = await client.post("/v1/notices", headers=world.ha, json={
        "key": "b-terms", "version": "1", "title": "A 약관", "body": "A 본문", "effective_at": "2024-01-01T00:00:00Z"})
    assert mine.status_code == 201, mine.text


async def test_collection_points_are_per_tenant(client, world):
    purpose = {"key": "b-only", "kind": "optional", "disclosures": {"ko": _text()}}
    assert (await client.post("/v1/purposes", json=purpose, headers=world.hb)).status_code == 201
    point = {"key": "b-point", "name": "B 이벤트", "kind": "event", "notice_key": "privacy-policy",
             "purposes": ["b-only", "marketing"]}
    assert (await client.post("/v1/collection-points", json=point, headers=world.hb)).status_code == 201

    a_list = await client.get("/v1/collection-points", headers=world.ha)
    assert "b-point" not in {p["key"] for p in a_list.json()}
    assert not _ids(a_list) & _ids(await client.get("/v1/collection-points", headers=world.hb))
    await assert_indistinguishable_404(client, world.ha, "GET", "/v1/collection-points/{id}", "b-point")
    await assert_indistinguishable_404(client, world.ha, "GET", "/v1/collection-points/{id}/form", "b-point")
    await assert_indistinguishable_404(client, world.ha, "PATCH", "/v1/collection-points/{id}", "b-point",
                                       {"name": "A was here"})
    await assert_indistinguishable_404(client, world.ha, "DELETE", "/v1/collection-points/{id}", "b-point")
    assert (await client.get("/v1/collection-points/b-point", headers=world.hb)).json()["name"] == "B 이벤트"

    # A cannot present B's purpose on its own collection point
    response = await client.post("/v1/collection-points", headers=world.ha, json={**point, "key": "a-point"})
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["body.purposes[0]"]

    # and the shared "signup" key shows each tenant its own form
    a_form, b_form = await form(client, world.ha), await form(client, world.hb)
    assert a_form["notice"]["id"] != b_form["notice"]["id"]
