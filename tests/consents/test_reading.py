from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from tests.helpers import sign_up


async def test_as_of_before_first_event_between_events_and_now(client, auth, demo):
    headers = auth(demo)
    before = datetime.now(UTC) - timedelta(seconds=1)
    await sign_up(client, headers, "r-1", granted={"marketing-sms"})
    await asyncio.sleep(0.05)
    between = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await client.post("/v1/subjects/r-1/consents/marketing-sms/withdraw", headers=headers)

    def statuses(page):
        return {c["purpose"]: (c["status"], c["version"]) for c in page["consents"]}

    past = (await client.get("/v1/subjects/r-1/consents", params={"as_of": before.isoformat()},
                             headers=headers)).json()
    assert past["consents"] == []
    mid = (await client.get("/v1/subjects/r-1/consents", params={"as_of": between.isoformat()},
                            headers=headers)).json()
    assert statuses(mid)["marketing-sms"] == ("granted", 1)
    now = (await client.get("/v1/subjects/r-1/consents", headers=headers)).json()
    assert statuses(now)["marketing-sms"] == ("withdrawn", 2)
    later = (await client.get("/v1/subjects/r-1/consents",
                              params={"as_of": datetime.now(UTC).isoformat()}, headers=headers)).json()
    assert statuses(later) == statuses(now)


async def test_as_of_needs_an_offset(client, auth, demo):
    headers = auth(demo)
    await sign_up(client, headers, "r-2")
    response = await client.get("/v1/subjects/r-2/consents", params={"as_of": "2026-01-01T00:00:00"},
                                headers=headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "query.as_of"


async def test_state_carries_since_version_notice(client, auth, demo):
    headers = auth(demo)
    recorded = (await sign_up(client, headers, "r-3", granted={"marketing-email"})).json()
    state = (await client.get("/v1/subjects/r-3/consents", headers=headers)).json()
    email = next(c for c in state["consents"] if c["purpose"] == "marketing-email")
    assert email["status"] == "granted" and email["version"] == 1
    assert email["notice"]["version"] == "2020-02-18"
    assert email["collection_point"] == "signup"
    assert email["since"].startswith(recorded["recorded_at"][:19])


async def test_history_paginates_with_cursor_and_filters_by_purpose(client, auth, demo):
    headers = auth(demo)
    await sign_up(client, headers, "r-4", granted={"marketing-sms"})
    await client.post("/v1/subjects/r-4/consents/marketing-sms/withdraw", headers=headers)
    seen, cursor = [], None
    while True:
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/subjects/r-4/consents/history", params=params, headers=headers)).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [e["seq"] for e in seen] == list(range(1, 13))
    sms = (await client.get("/v1/subjects/r-4/consents/history", params={"purpose": "marketing-sms"},
                            headers=headers)).json()["items"]
    assert [(e["action"], e["version"]) for e in sms] == [("granted", 1), ("withdrawn", 2)]
    bad = await client.get("/v1/subjects/r-4/consents/history", params={"cursor": "!!"}, headers=headers)
    assert bad.status_code == 422


async def test_versions_increase_per_subject_and_purpose(client, auth, demo):
    headers = auth(demo)
    await sign_up(client, headers, "r-5", granted={"marketing-sms"})
    await client.post("/v1/subjects/r-5/consents/marketing-sms/withdraw", headers=headers)
    await sign_up(client, headers, "r-5", granted={"marketing-sms"})
    items = (await client.get("/v1/subjects/r-5/consents/history", params={"purpose": "marketing-sms"},
                              headers=headers)).json()["items"]
    assert [e["version"] for e in items] == [1, 2, 3]
    assert [e["status"] for e in items] == ["granted", "withdrawn", "granted"]


async def test_reading_unknown_subject_is_404(client, auth, demo):
    headers = auth(demo)
    for path in ("consents", "consents/history", "consents/verify"):
        response = await client.get(f"/v1/subjects/ghost/{path}", headers=headers)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"


async def test_a_forged_history_cursor_is_a_422_naming_the_field(client, auth, demo):
    headers = auth(demo)
    assert (await sign_up(client, headers, "cursor-1")).status_code == 201
    for cursor in ("garbage", "c2VxOi0x", "bm90LWEtc2VxOjE"):  # not base64 text, "seq:-1", "not-a-seq:1"
        response = await client.get("/v1/subjects/cursor-1/consents/history", params={"cursor": cursor},
                                    headers=headers)
        assert response.status_code == 422, (cursor, response.text)
        assert response.json()["errors"][0]["field"] == "query.cursor"
