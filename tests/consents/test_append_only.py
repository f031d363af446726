from __future__ import annotations

import asyncpg
import pytest

from tests.helpers import sign_up


async def _one_event(db, tenant, subject):
    return await db.fetchrow(
        "SELECT e.* FROM consent_events e JOIN subjects s ON s.id = e.subject_id "
        "WHERE s.tenant_id = $1 AND s.external_id = $2 ORDER BY e.seq LIMIT 1", tenant, subject)


@pytest.mark.parametrize("statement", [
    "UPDATE consent_events SET status = 'granted' WHERE id = $1",
    "DELETE FROM consent_events WHERE id = $1",
])
async def test_database_refuses_update_and_delete_of_events(client, auth, demo, db, statement):
    await sign_up(client, auth(demo), "a-1")
    event = await _one_event(db, demo, "a-1")
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await db.execute(statement, event["id"])
    assert (await _one_event(db, demo, "a-1"))["hash"] == event["hash"]


async def test_database_refuses_truncate_of_events(db):
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await db.execute("TRUNCATE consent_events CASCADE")


async def test_verify_reports_an_altered_event(client, auth, demo, db):
    """Someone with superuser rights disables the trigger and edits history: verify finds the spot."""
    headers = auth(demo, "audit:read", "consents:write", "consents:read")
    await sign_up(client, headers, "a-2", granted={"marketing-sms"})
    await client.post("/v1/subjects/a-2/consents/marketing-sms/withdraw", headers=headers)
    assert (await client.get("/v1/subjects/a-2/consents/verify", headers=headers)).json()["valid"] is True
    target = await db.fetchrow(
        "SELECT e.id, e.seq FROM consent_events e JOIN subjects s ON s.id = e.subject_id "
        "WHERE s.tenant_id = $1 AND s.external_id = 'a-2' AND e.action = 'withdrawn'", demo)
    await db.execute("ALTER TABLE consent_events DISABLE TRIGGER consent_events_append_only")
    try:
        await db.execute("UPDATE consent_events SET status = 'granted', action = 'granted' WHERE id = $1",
                         target["id"])
    finally:
        await db.execute("ALTER TABLE consent_events ENABLE TRIGGER consent_events_append_only")
    report = (await client.get("/v1/subjects/a-2/consents/verify", headers=headers)).json()
    assert report["valid"] is False
    assert report["first_break"]["seq"] == target["seq"]
    assert report["first_break"]["kind"] == "altered_event"


async def test_verify_reports_a_removed_event(client, auth, demo, db):
    headers = auth(demo)
    await sign_up(client, headers, "a-3")
    await db.execute("ALTER TABLE consent_events DISABLE TRIGGER consent_events_append_only")
    try:
        await db.execute(
            "DELETE FROM consent_events WHERE seq = 5 AND subject_id = "
            "(SELECT id FROM subjects WHERE tenant_id = $1 AND external_id = 'a-3')", demo)
    finally:
        await db.execute("ALTER TABLE consent_events ENABLE TRIGGER consent_events_append_only")
    report = (await client.get("/v1/subjects/a-3/consents/verify", headers=headers)).json()
    assert report["valid"] is False
    assert report["first_break"]["seq"] == 5
    assert report["first_break"]["kind"] == "missing_event"


async def test_each_event_links_to_the_previous_hash(client, auth, demo):
    headers = auth(demo)
    await sign_up(client, headers, "a-4")
    items = (await client.get("/v1/subjects/a-4/consents/history", headers=headers)).json()["items"]
    assert items[0]["prev_hash"] is None
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(items, items[1:]))


async def test_verify_needs_audit_scope(client, auth, demo):
    await sign_up(client, auth(demo), "a-5")
    response = await client.get("/v1/subjects/a-5/consents/verify", headers=auth(demo, "consents:read"))
    assert response.status_code == 403
