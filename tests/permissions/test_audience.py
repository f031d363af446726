"""POST /v1/permissions/{channel}/check: a campaign's audience at once, by the single check's rules
(Network Act Art. 50; PIPA Art. 22(1)7), from the ledger's own states: never stale."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import orjson

from tests.helpers import decisions_for, form

# 14:00 KST tomorrow: after every event of these tests, and in the day (after 21:00 KST an SMS ad also
# needs the night-time consent, Network Act Art. 50(3)); relative, so that it stays after them
DAY = (datetime.now(UTC) + timedelta(days=1)).replace(hour=5, minute=0, second=0, microsecond=0)


async def _grant(client, headers, subject: str, granted: set[str], point: str = "signup") -> None:
    body = decisions_for(await form(client, headers, point), granted)
    response = await client.post(f"/v1/subjects/{subject}/consents", json=body, headers=headers)
    assert response.status_code == 201, response.text


async def _audience(client, headers, channel: str, ids: list[str], query: str = "") -> dict:
    response = await client.post(f"/v1/permissions/{channel}/check{query}", headers=headers,
                                 json={"subject_ids": ids})
    assert response.status_code == 200, response.text
    return response.json()


async def _population(client, headers) -> list[str]:
    await _grant(client, headers, "a-yes", {"marketing", "marketing-sms"})
    await _grant(client, headers, "a-no-umbrella", {"marketing-sms"})
    await _grant(client, headers, "a-refused", {"marketing"})
    await _grant(client, headers, "a-never", set(), point="insurance")
    return ["a-yes", "a-no-umbrella", "a-refused", "a-never", "a-unknown", "a-yes"]


async def test_network_act_50_the_audience_check_agrees_with_the_single_check(client, auth, demo):
    headers = auth(demo)
    ids = await _population(client, headers)
    at = quote(DAY.isoformat())
    answer = await _audience(client, headers, "sms", ids, f"?at={at}")
    assert answer["allowed"] == ["a-yes", "a-yes"]  # in the order given, duplicates as given
    denied = {subject: set(group["reasons"]) for group in answer["denied"] for subject in group["subject_ids"]}
    assert denied == {"a-no-umbrella": {"marketing_refused"}, "a-refused": {"channel_refused"},
                      "a-never": {"marketing_no_consent", "channel_no_consent"},
                      "a-unknown": {"marketing_no_consent", "channel_no_consent", "subject_unknown"}}
    assert answer["counts"] == {"checked": 6, "allowed": 2, "denied": 4}
    assert answer["reasons"]["channel_refused"]["article"].startswith("Network Act Art. 50(1)")
    for subject in set(ids):
        single = (await client.get(f"/v1/subjects/{subject}/permissions/sms?at={at}", headers=headers)).json()
        assert single["allowed"] == (subject == "a-yes"), subject


async def test_network_act_50_2_a_withdrawal_committed_before_the_call_is_seen(client, auth, demo):
    headers = auth(demo)
    await _grant(client, headers, "w-1", {"marketing", "marketing-sms", "marketing-night"})
    assert (await _audience(client, headers, "sms", ["w-1"]))["allowed"] == ["w-1"]
    before = datetime.now(UTC)
    response = await client.post("/v1/subjects/w-1/consents/marketing-sms/withdraw", json={}, headers=headers)
    assert response.status_code == 200
    after = await _audience(client, headers, "sms", ["w-1"])
    assert after["allowed"] == [] and after["denied"] == [{"reasons": ["channel_withdrawn"], "subject_ids": ["w-1"]}]
    # an instant in the past reads the events as they were then
    then = await _audience(client, headers, "sms", ["w-1"], f"?at={quote(before.isoformat())}")
    assert then["allowed"] == ["w-1"]


async def test_network_act_50_1_1_the_audience_check_knows_existing_customers(client, auth, demo):
    headers = auth(demo)
    await _grant(client, headers, "x-1", set(), point="insurance")
    response = await client.post("/v1/subjects/x-1/transactions", headers=headers, json={
        "goods_category": "tickets", "transacted_at": (datetime.now(UTC) - timedelta(days=30)).isoformat()})
    assert response.status_code == 201
    noon = datetime.now(UTC).replace(hour=3, minute=0, second=0, microsecond=0) + timedelta(days=1)  # 12:00 KST
    answer = await _audience(client, headers, "sms", ["x-1"], f"?category=tickets&at={quote(noon.isoformat())}")
    assert answer["allowed"] == ["x-1"]


async def test_an_audience_streams_in_and_out_as_ndjson(client, auth, demo):
    headers = {**auth(demo), "Content-Type": "application/x-ndjson"}
    await _population(client, auth(demo))
    lines = b'"a-yes"\n{"subject_id": "a-refused"}\n\n"a-unknown"'
    response = await client.post(f"/v1/permissions/sms/check?at={quote(DAY.isoformat())}", headers=headers,
                                 content=lines)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
    out = [orjson.loads(line) for line in response.content.splitlines()]
    assert [(o["subject_id"], o["allowed"]) for o in out[:-1]] == [
        ("a-yes", True), ("a-refused", False), ("a-unknown", False)]
    assert out[-1]["summary"]["counts"] == {"checked": 3, "allowed": 1, "denied": 2}
    bad = await client.post("/v1/permissions/sms/check", headers=headers, content=b'"a-yes"\n42\n')
    assert orjson.loads(bad.content.splitlines()[-1])["error"]["errors"][0]["field"] == "body[line 2]"


async def test_the_audience_check_refuses_what_it_cannot_answer(client, auth, demo):
    headers = auth(demo)
    too_many = [f"m{i}" for i in range(100_001)]
    response = await client.post("/v1/permissions/sms/check", headers=headers, json={"subject_ids": too_many})
    assert response.status_code == 422 and "NDJSON" in response.json()["detail"]
    for body in ({"subject_ids": "a-yes"}, {"subject_ids": [1]}, {"ids": []}, ["a-yes"]):
        response = await client.post("/v1/permissions/sms/check", headers=headers, json=body)
        assert response.status_code == 422, body
    response = await client.post("/v1/permissions/night/check", headers=headers, json={"subject_ids": []})
    assert response.status_code == 422
    assert (await client.post("/v1/permissions/sms/check", headers=auth(demo, "catalog:read"),
                              json={"subject_ids": []})).status_code == 403
    processor = auth(demo, "permissions:read", sub="alimi")
    assert (await client.post("/v1/permissions/sms/check", headers=processor, json={"subject_ids": []})
            ).status_code == 200


async def test_a_chunked_json_audience_is_cut_at_its_limit(client, auth, demo):
    """A JSON body without Content-Length is read only up to the JSON limit (8 MiB), not whole."""
    from app.permissions import audience

    async def body():
        yield b'{"subject_ids": ["'
        for _ in range(audience.JSON_MAX_BYTES // 65536 + 2):
            yield b"x" * 65536
        yield b'"]}'

    response = await client.post("/v1/permissions/sms/check", headers=auth(demo), content=body())
    assert response.status_code == 422 and "NDJSON" in response.json()["detail"]
