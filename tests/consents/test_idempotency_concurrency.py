from __future__ import annotations

import asyncio

from tests.helpers import decisions_for, event_count, form


async def test_retry_with_same_key_returns_first_result_and_writes_nothing(client, auth, demo, db):
    headers = auth(demo)
    body = decisions_for(await form(client, headers), {"marketing-sms"})
    keyed = {**headers, "Idempotency-Key": "signup-i-1"}
    first = await client.post("/v1/subjects/i-1/consents", json=body, headers=keyed)
    assert first.status_code == 201
    written = await event_count(db, demo, "i-1")
    second = await client.post("/v1/subjects/i-1/consents", json=body, headers=keyed)
    assert second.status_code == 201
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert await event_count(db, demo, "i-1") == written == 11


async def test_same_key_different_body_is_refused(client, auth, demo, db):
    headers = {**auth(demo), "Idempotency-Key": "signup-i-2"}
    body = decisions_for(await form(client, headers))
    assert (await client.post("/v1/subjects/i-2/consents", json=body, headers=headers)).status_code == 201
    body["decisions"][-1]["decision"] = "granted"
    response = await client.post("/v1/subjects/i-2/consents", json=body, headers=headers)
    assert response.status_code == 422
    assert response.json()["type"].endswith("idempotency-key-reused")
    other_path = await client.post("/v1/subjects/i-2b/consents", json=body, headers=headers)
    assert other_path.status_code == 422
    assert await event_count(db, demo, "i-2") == 11


async def test_failed_request_stores_no_key_so_retry_reruns(client, auth, demo):
    headers = {**auth(demo), "Idempotency-Key": "signup-i-3"}
    body = decisions_for(await form(client, headers))
    body["decisions"][0]["decision"] = "refused"  # required purpose refused
    assert (await client.post("/v1/subjects/i-3/consents", json=body, headers=headers)).status_code == 422
    assert (await client.post("/v1/subjects/i-3/consents", json=body, headers=headers)).status_code == 422


async def test_concurrent_duplicates_with_one_key_write_once(client, auth, demo, db):
    headers = {**auth(demo), "Idempotency-Key": "signup-i-4"}
    body = decisions_for(await form(client, headers), {"marketing-email"})
    responses = await asyncio.gather(*[
        client.post("/v1/subjects/i-4/consents", json=body, headers=headers) for _ in range(8)
    ])
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["request_id"] for r in responses}) == 1
    assert await event_count(db, demo, "i-4") == 11


async def test_idempotent_withdrawal(client, auth, demo, db):
    headers = auth(demo)
    await client.post("/v1/subjects/i-5/consents", headers=headers,
                      json=decisions_for(await form(client, headers), {"marketing-sms"}))
    keyed = {**headers, "Idempotency-Key": "withdraw-i-5"}
    first = await client.post("/v1/subjects/i-5/consents/marketing-sms/withdraw", headers=keyed)
    second = await client.post("/v1/subjects/i-5/consents/marketing-sms/withdraw", headers=keyed)
    assert first.json() == second.json()
    assert second.json()["results"][0]["changed"] is True  # the first result, replayed
    assert await event_count(db, demo, "i-5") == 12


async def test_concurrent_writes_on_one_subject_are_totally_ordered(client, auth, demo, db):
    headers = auth(demo)
    signup = await form(client, headers)
    prefs = await form(client, headers, "preferences")
    await client.post("/v1/subjects/c-1/consents", json=decisions_for(signup, all_granted=True), headers=headers)

    calls = []
    for i in range(24):
        if i % 3 == 0:
            calls.append(client.post("/v1/subjects/c-1/consents/marketing-sms/withdraw", headers=headers))
        elif i % 3 == 1:
            granted = {"marketing-sms", "marketing-push"} if i % 2 else {"marketing-email"}
            calls.append(client.post("/v1/subjects/c-1/consents", json=decisions_for(prefs, granted),
                                     headers=headers))
        else:
            calls.append(client.post("/v1/subjects/c-1/consents/withdraw", json={"kind": "marketing"},
                                     headers=headers))
    responses = await asyncio.gather(*calls)
    assert all(r.status_code in (200, 201) for r in responses), [r.text for r in responses if r.status_code >= 300]

    rows = await db.fetch(
        "SELECT e.seq, e.purpose_id, e.version, e.status, e.recorded_at FROM consent_events e "
        "JOIN subjects s ON s.id = e.subject_id WHERE s.tenant_id = $1 AND s.external_id = 'c-1' ORDER BY e.seq",
        demo)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(a["recorded_at"] <= b["recorded_at"] for a, b in zip(rows, rows[1:]))
    last: dict = {}
    for r in rows:
        expected_version = last.get(r["purpose_id"], (0, None))[0] + 1
        assert r["version"] == expected_version
        last[r["purpose_id"]] = (r["version"], r["status"])
    states = await db.fetch(
        "SELECT st.purpose_id, st.version, st.status FROM consent_states st JOIN subjects s ON s.id = st.subject_id "
        "WHERE s.tenant_id = $1 AND s.external_id = 'c-1'", demo)
    assert {s["purpose_id"]: (s["version"], s["status"]) for s in states} == last
    verification = (await client.get("/v1/subjects/c-1/consents/verify", headers=headers)).json()
    assert verification["valid"] is True
    assert verification["events_checked"] == len(rows)


async def test_writes_of_different_subjects_do_not_wait_on_each_other(client, auth, demo, db, app):
    """A transaction holding subject A's lock must not block a write for subject B."""
    headers = auth(demo)
    body = decisions_for(await form(client, headers))
    await client.post("/v1/subjects/lock-a/consents", json=body, headers=headers)
    async with db.transaction():
        await db.execute("SELECT 1 FROM subjects WHERE tenant_id = $1 AND external_id = 'lock-a' FOR UPDATE", demo)
        other = await asyncio.wait_for(
            client.post("/v1/subjects/lock-b/consents", json=body, headers=headers), timeout=5)
        assert other.status_code == 201
        blocked = asyncio.ensure_future(client.post("/v1/subjects/lock-a/consents", json=body, headers=headers))
        await asyncio.sleep(0.3)
        assert not blocked.done()
    assert (await asyncio.wait_for(blocked, timeout=5)).status_code == 201
