"""Issue 10: the duties the law puts on a controller after the checkbox (docs/duties.md).

Clocks run without waiting: an act's `occurred_at` in the past puts its deadlines in the past (a
paper form entered late is exactly that), and the scheduler is run once by hand.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import asyncpg

from tests.helpers import decisions_for, form

KST = timezone(timedelta(hours=9))
ADS = {"marketing", "marketing-sms", "marketing-email"}


async def sign_up(client, headers, member, granted, occurred_at=None):
    body = decisions_for(await form(client, headers), granted)
    if occurred_at is not None:
        body["occurred_at"] = occurred_at
    response = await client.post(f"/v1/subjects/{member}/consents", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def duties(client, headers, **params) -> list[dict]:
    response = await client.get("/v1/duties", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_network_act_50_7_one_result_notice_per_request_due_14_days_after_the_act_across_a_month_end(
        client, auth, demo):
    headers = auth(demo, "consents:write", "consents:read", "duties:read")
    await sign_up(client, headers, "n-1", ADS, occurred_at="2026-01-25T10:00:00+09:00")
    notices = await duties(client, headers, subject_id="n-1", kind="ad_result_notice")
    assert len(notices) == 1  # sms and email granted, kakao and night refused: one notice for the request
    notice = notices[0]
    # the day of the act is not counted: 26 Jan .. 8 Feb, so the notice is due before 9 Feb 00:00 KST
    assert at(notice["due_at"]) == datetime(2026, 2, 9, tzinfo=KST)
    assert notice["status"] == "overdue"  # that date has passed; the scheduler need not have run
    contents = notice["contents"]
    assert contents["sender"]["name"] == f"Test tenant {demo}"
    assert {(a["purpose"], a["action"], a["on"]) for a in contents["acts"]} == {
        ("marketing-sms", "granted", "2026-01-25"), ("marketing-email", "granted", "2026-01-25"),
        ("marketing-kakao", "refused", "2026-01-25"), ("marketing-night", "refused", "2026-01-25")}
    assert "50조제7항" in contents["article"]


async def test_network_act_50_8_reconfirmation_before_the_same_date_two_years_on_29_february_included(
        client, auth, demo):
    headers = auth(demo, "consents:write", "duties:read", "catalog:write")
    await sign_up(client, headers, "r-1", {"marketing-sms"}, occurred_at="2024-02-29T12:00:00+09:00")
    (duty,) = await duties(client, headers, subject_id="r-1", kind="reconfirmation")
    # 2026 has no 29 February: the two years end with 28 February (Civil Act Art. 160(3))
    assert at(duty["due_at"]) == datetime(2026, 3, 1, tzinfo=KST)
    assert at(duty["notify_at"]) == datetime(2026, 3, 1, tzinfo=KST) - timedelta(days=30)
    assert duty["purpose"] == "marketing-sms" and duty["contents"]["consented_on"] == "2024-02-29"
    assert duty["contents"]["how_to_keep_or_withdraw"]["ko"]

    await sign_up(client, headers, "r-2", {"marketing-email"}, occurred_at="2025-03-10T23:30:00+09:00")
    (duty,) = await duties(client, headers, subject_id="r-2", kind="reconfirmation")
    assert at(duty["due_at"]) == datetime(2027, 3, 10, tzinfo=KST)  # a calendar rule, not 730 days

    settings = {"reconfirmation_lead_days": 60, "overdue_reconfirmation_denies": False,
                "withdrawal_instructions": {"ko": "앱 설정에서 철회", "en": "Withdraw in the app's settings"}}
    assert (await client.put("/v1/settings/duties", json=settings, headers=headers)).status_code == 200
    await sign_up(client, headers, "r-3", {"marketing-email"}, occurred_at="2025-03-10T23:30:00+09:00")
    (duty,) = await duties(client, headers, subject_id="r-3", kind="reconfirmation")
    assert at(duty["notify_at"]) == datetime(2027, 3, 10, tzinfo=KST) - timedelta(days=60)
    assert duty["contents"]["how_to_keep_or_withdraw"]["en"] == "Withdraw in the app's settings"

    # r-1 is told and keeps silent: the consent stands, the next reconfirmation is due two years on
    # from the consent's date (29 Feb 2028 exists: before it)
    (first,) = await duties(client, headers, subject_id="r-1", kind="reconfirmation")
    sent = await client.post(f"/v1/duties/{first['id']}/fulfilment", headers=auth(demo, "duties:write"),
                             json={"outcome": "sent", "channel": "sms"})
    assert sent.status_code == 201 and sent.json()["fulfilment"]["late"] is True  # sent after 1 Mar 2026
    (following,) = await duties(client, headers, subject_id="r-1", kind="reconfirmation", status="due")
    assert at(following["due_at"]) == datetime(2028, 2, 29, tzinfo=KST)
    assert following["contents"]["cycle"] == 2 and following["contents"]["follows"]["duty_id"] == first["id"]


async def test_fulfilment_is_recorded_once_with_who_how_when_and_is_idempotent(client, auth, demo, new_tenant):
    headers = auth(demo, "consents:write", "duties:read", "duties:write", sub="officer")
    await sign_up(client, headers, "f-1", {"marketing-sms"})
    (notice,) = await duties(client, headers, subject_id="f-1", kind="ad_result_notice")
    url = f"/v1/duties/{notice['id']}/fulfilment"

    missing = await client.post(url, json={"outcome": "sent"}, headers=headers)
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "body.channel"
    sent = {"outcome": "sent", "channel": "sms", "reference": "msg-1",
            "at": (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0).isoformat()}
    first = await client.post(url, json=sent, headers=headers)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["status"] == "sent" and body["fulfilment"]["by"] == "officer"
    assert body["fulfilment"]["channel"] == "sms" and body["fulfilment"]["late"] is False
    assert [r["action"] for r in body["records"]] == ["created", "sent"]
    assert body["records"][1]["prev_hash"] == body["records"][0]["hash"]

    again = await client.post(url, json=sent, headers=headers)
    assert again.status_code == 200 and len(again.json()["records"]) == 2  # nothing written
    other = await client.post(url, json={**sent, "channel": "email"}, headers=headers)
    assert other.status_code == 409
    future = await client.post(f"/v1/duties/{notice['id']}/fulfilment", headers=headers,
                               json={**sent, "at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()})
    assert future.status_code == 409  # closed already: a later claim does not overwrite

    stranger = auth(await new_tenant(), "duties:read", "duties:write")
    assert (await client.get(f"/v1/duties/{notice['id']}", headers=stranger)).status_code == 404
    assert (await client.post(url, json=sent, headers=stranger)).status_code == 404
    assert (await client.get(f"/v1/duties/{notice['id']}", headers=auth(demo, "consents:read"))).status_code == 403


async def test_the_scheduler_announces_what_came_due_and_marks_what_is_overdue_once(
        client, auth, demo, endpoint, run_scheduler, db):
    headers = auth(demo, "consents:write", "duties:read", "audit:read")
    await endpoint(demo, event_types=("duty.ad_result_notice", "duty.overdue"))
    await sign_up(client, headers, "s-1", {"marketing-sms"})  # a notice due in 14 days: announced now
    await sign_up(client, headers, "s-2", {"marketing-sms"}, occurred_at="2023-01-02T09:00:00+09:00")
    moved = await run_scheduler()
    assert moved["notified"] >= 1 and moved["overdue"] >= 2  # s-2's notice and reconfirmation are overdue
    assert await run_scheduler() == {"overdue": 0, "notified": 0, "reconsent": 0}  # never twice

    (announced,) = await duties(client, headers, subject_id="s-1", kind="ad_result_notice")
    detail = (await client.get(f"/v1/duties/{announced['id']}", headers=headers)).json()
    assert [r["action"] for r in detail["records"]] == ["created", "notified"] and detail["status"] == "due"
    overdue = await duties(client, headers, subject_id="s-2", status="overdue")
    assert {d["kind"] for d in overdue} == {"ad_result_notice", "reconfirmation"}
    rows = await db.fetch("SELECT type, body FROM webhook_messages WHERE tenant_id = $1 AND type LIKE 'duty.%'", demo)
    bodies = {(r["type"], json.loads(r["body"])["data"]["duty_id"]) for r in rows}
    assert ("duty.ad_result_notice", announced["id"]) in bodies
    assert {("duty.overdue", d["id"]) for d in overdue} <= bodies
    # every step is in the duty's chain, sealed, and in the log: verify says so
    for member in ("s-1", "s-2"):
        report = (await client.get(f"/v1/subjects/{member}/consents/verify", headers=headers)).json()
        assert report["valid"], report["breaks"]
        assert report["duty_records_checked"] >= 2


async def test_pipa_37_each_processor_confirms_it_stopped_with_its_own_token(
        client, auth, demo, endpoint, processor_token, db):
    headers = auth(demo, "consents:write", "duties:read")
    await endpoint(demo, processor="alimi", channels=("sms",))
    await endpoint(demo, processor="stibee", channels=("email",))
    await sign_up(client, headers, "p-1", {"marketing", "marketing-sms", "marketing-email"})
    withdrawn = await client.post("/v1/subjects/p-1/consents/marketing-sms/withdraw", headers=headers)
    assert withdrawn.status_code == 200
    (duty,) = await duties(client, headers, subject_id="p-1", kind="suppression")
    assert duty["processor"] == "alimi" and duty["purpose"] == "marketing-sms"
    # due 10 days after the withdrawal (Decree Art. 41(2), 44(2))
    today = datetime.now(KST).date()
    assert at(duty["due_at"]) == datetime.combine(today + timedelta(days=11), datetime.min.time(), KST)
    # the consent.withdrawn message tells the processor which duty to acknowledge
    body = json.loads(await db.fetchval("SELECT body FROM webhook_messages WHERE tenant_id = $1 AND "
                                        "type = 'consent.withdrawn' AND subject_ref = 'p-1'", demo))
    opened = {d["kind"]: d for d in body["data"]["duties"]}
    assert opened["suppression"]["duty_id"] == duty["id"] and opened["suppression"]["processor"] == "alimi"
    assert "ad_result_notice" in opened  # the withdrawal's own result notice (Art. 50(7))

    url = f"/v1/duties/{duty['id']}/ack"
    assert (await client.post(url, json={}, headers=processor_token(demo, "stibee"))).status_code == 404
    assert (await client.post(url, json={}, headers=auth(demo, "duties:ack"))).status_code == 403  # no processor
    assert (await client.post(f"/v1/duties/{duty['id']}/fulfilment", json={"outcome": "done"},
                              headers=auth(demo, "duties:write"))).status_code == 409
    alimi = processor_token(demo, "alimi")
    first = await client.post(url, json={"reference": "suppressed-42"}, headers=alimi)
    assert first.status_code == 201, first.text
    assert first.json()["status"] == "done" and first.json()["fulfilment"]["processor"] == "alimi"
    again = await client.post(url, json={"reference": "suppressed-42"}, headers=alimi)
    assert again.status_code == 200 and len(again.json()["records"]) == 2
    # a processor lists only its own duties
    assert {d["processor"] for d in await duties(client, alimi)} == {"alimi"}
    assert (await client.get("/v1/duties", params={"processor": "stibee"}, headers=alimi)).status_code == 403
    assert await duties(client, processor_token(demo, "stibee")) == []


async def test_unacknowledged_suppressions_become_overdue_and_are_listed_per_processor(
        client, auth, demo, endpoint):
    headers = auth(demo, "consents:write", "duties:read")
    await endpoint(demo, processor="alimi", channels=("sms",))
    await sign_up(client, headers, "o-1", {"marketing", "marketing-sms"}, occurred_at="2025-06-01T10:00:00+09:00")
    late = {"occurred_at": "2025-06-02T10:00:00+09:00"}
    assert (await client.post("/v1/subjects/o-1/consents/marketing-sms/withdraw", json=late, headers=headers)
            ).status_code == 200
    response = await client.get("/v1/duties", params={"status": "overdue", "processor": "alimi", "counts": "true"},
                                headers=headers)
    page = response.json()
    assert [d["kind"] for d in page["items"]] == ["suppression"]
    assert page["counts"] == {"suppression": 1}


async def test_decree_62_3_reconfirmed_restarts_the_clock_and_a_withdrawal_cancels_it(client, auth, demo):
    headers = auth(demo, "consents:write", "consents:read", "duties:read")
    await sign_up(client, headers, "c-1", {"marketing-sms"}, occurred_at="2024-05-01T10:00:00+09:00")
    (first,) = await duties(client, headers, subject_id="c-1", kind="reconfirmation")
    answer = await client.post("/v1/subjects/c-1/consents/marketing-sms/reconfirm", headers=headers,
                               json={"occurred_at": "2026-04-20T10:00:00+09:00", "method": "app"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["event"]["action"] == "reconfirmed" and answer.json()["event"]["status"] == "granted"
    done = (await client.get(f"/v1/duties/{first['id']}", headers=headers)).json()
    assert done["status"] == "done" and done["fulfilment"]["answer"] == "reconfirmed"
    (following,) = await duties(client, headers, subject_id="c-1", kind="reconfirmation", status="due")
    assert at(following["due_at"]) == datetime(2028, 4, 20, tzinfo=KST)
    assert following["cause_event_id"] == answer.json()["event"]["id"]

    assert (await client.post("/v1/subjects/c-1/consents/marketing-sms/withdraw", headers=headers)).status_code == 200
    cancelled = (await client.get(f"/v1/duties/{following['id']}", headers=headers)).json()
    assert cancelled["status"] == "cancelled" and cancelled["fulfilment"]["reason"] == "consent withdrawn"
    refused = await client.post("/v1/subjects/c-1/consents/marketing-sms/reconfirm", headers=headers)
    assert refused.status_code == 409  # only a granted consent is reconfirmed


async def test_network_act_50_8_the_permission_check_reports_an_overdue_reconfirmation_and_the_tenant_decides(
        client, auth, demo):
    headers = auth(demo, "consents:write", "permissions:read", "catalog:write")
    await sign_up(client, headers, "q-1", {"marketing", "marketing-sms"}, occurred_at="2023-06-01T10:00:00+09:00")
    noon = (datetime.now(KST) + timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0).isoformat()
    answer = (await client.get("/v1/subjects/q-1/permissions/sms", params={"at": noon}, headers=headers)).json()
    overdue = [r for r in answer["reasons"] if r["code"] == "reconfirmation_overdue"]
    assert len(overdue) == 1 and overdue[0]["allows"] is True and answer["allowed"] is True
    assert at(overdue[0]["duty"]["due_at"]) == datetime(2025, 6, 1, tzinfo=KST)
    # before the deadline it is no reason at all
    before = (await client.get("/v1/subjects/q-1/permissions/sms", headers=headers,
                               params={"at": "2025-05-31T12:00:00+09:00"})).json()
    assert "reconfirmation_overdue" not in {r["code"] for r in before["reasons"]}
    assert (await client.put("/v1/settings/duties", json={"overdue_reconfirmation_denies": True},
                             headers=headers)).status_code == 200
    denied = (await client.get("/v1/subjects/q-1/permissions/sms", params={"at": noon}, headers=headers)).json()
    assert denied["allowed"] is False


async def test_the_state_read_shows_each_purposes_next_duty(client, auth, demo):
    headers = auth(demo, "consents:write", "consents:read")
    await sign_up(client, headers, "v-1", {"marketing-sms"})
    state = (await client.get("/v1/subjects/v-1/consents", headers=headers)).json()
    by = {c["purpose"]: c for c in state["consents"]}
    # the result notice of the sign-up (14 days) comes before the reconfirmation (2 years)
    assert by["marketing-sms"]["next_duty"]["kind"] == "ad_result_notice"
    assert by["marketing-kakao"]["next_duty"]["kind"] == "ad_result_notice"  # refused: told of that too
    assert by["membership"]["next_duty"] is None
    past = (await client.get("/v1/subjects/v-1/consents", headers=headers,
                             params={"as_of": state["consents"][0]["since"]})).json()
    assert {c["purpose"]: c["next_duty"] for c in past["consents"]}["marketing-sms"]["kind"] == "ad_result_notice"


async def test_a_duty_marked_done_in_the_table_or_a_forged_record_is_reported(client, auth, demo, db, runtime_db):
    headers = auth(demo, "consents:write", "duties:read", "audit:read")
    await sign_up(client, headers, "x-1", {"marketing-sms"})
    (duty,) = await duties(client, headers, subject_id="x-1", kind="reconfirmation")
    # the service's own database role may not move a duty, nor rewrite or delete its records
    for sql in ("UPDATE duties SET status = 'done' WHERE id = $1", "DELETE FROM duty_records WHERE duty_id = $1",
                "UPDATE duty_records SET detail = '{}' WHERE duty_id = $1"):
        try:
            await runtime_db.execute(sql, duty["id"])
            raise AssertionError(f"the runtime role could run {sql}")
        except asyncpg.InsufficientPrivilegeError:
            pass
    # it can append a record that continues the chain (the database cannot tell it from the service's)
    # but cannot seal it
    last = await db.fetchrow("SELECT * FROM duty_records WHERE duty_id = $1 ORDER BY seq DESC LIMIT 1", duty["id"])
    from app.duties.records import Builder, Head
    row = await db.fetchrow("SELECT d.* FROM duties d WHERE id = $1", duty["id"])
    forged = Builder(tenant=demo, subject_ref="x-1", secret=b"not the service's secret",
                     now=max(datetime.now(UTC), last["recorded_at"]))
    forged.next(Head.of(row), action="sent", status="sent", detail={"channel": "sms", "by": "nobody"})
    await runtime_db.execute("INSERT INTO duty_records SELECT * FROM json_populate_recordset(NULL::duty_records, $1)",
                             forged.json())
    report = (await client.get("/v1/subjects/x-1/consents/verify", headers=headers)).json()
    assert {b["kind"] for b in report["breaks"]} == {"unsealed_duty"}

    # a superuser with triggers off marks another duty done in the table only
    (notice,) = await duties(client, headers, subject_id="x-1", kind="ad_result_notice")
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        await db.execute("UPDATE duties SET status = 'done' WHERE id = $1", notice["id"])
    report = (await client.get("/v1/subjects/x-1/consents/verify", headers=headers)).json()
    assert "duty_mismatch" in {b["kind"] for b in report["breaks"]}
    # or pushes a deadline out, which the permission check and the overdue list read
    (reconfirmation,) = await duties(client, headers, subject_id="x-1", kind="reconfirmation")
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        await db.execute("UPDATE duties SET due_at = due_at + interval '10 years' WHERE id = $1", reconfirmation["id"])
    report = (await client.get("/v1/subjects/x-1/consents/verify", headers=headers)).json()
    assert any("due_at" in b["detail"] for b in report["breaks"] if b["kind"] == "duty_mismatch")


async def test_a_duty_the_database_refuses_is_skipped_and_the_others_are_announced(
        client, auth, demo, db, run_scheduler):
    headers = auth(demo, "consents:write", "duties:read")
    for member in ("k-1", "k-2"):
        await sign_up(client, headers, member, {"marketing-sms"})
    (poisoned,) = await duties(client, headers, subject_id="k-1", kind="ad_result_notice")
    # a hand with triggers off dates the duty's last change tomorrow: its next record would be recorded
    # in the future, which the records' trigger refuses
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        await db.execute("UPDATE duties SET updated_at = now() + interval '1 day' WHERE id = $1", poisoned["id"])
    moved = await run_scheduler()
    assert moved["notified"] >= 1
    (announced,) = await duties(client, headers, subject_id="k-2", kind="ad_result_notice")
    detail = (await client.get(f"/v1/duties/{announced['id']}", headers=headers)).json()
    assert [r["action"] for r in detail["records"]] == ["created", "notified"]
    stuck = (await client.get(f"/v1/duties/{poisoned['id']}", headers=headers)).json()
    assert [r["action"] for r in stuck["records"]] == ["created"]
    assert (await run_scheduler())["notified"] == 0  # tried again, refused again, the pass ends
