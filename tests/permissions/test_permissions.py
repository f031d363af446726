"""May I send this ad now? GET /v1/subjects/{id}/permissions/{channel}: each rule with its article."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from tests.helpers import decisions_for, form

DAY = datetime(2026, 11, 20, 5, 0, tzinfo=UTC)      # 14:00 KST
NIGHT = datetime(2026, 11, 20, 13, 30, tzinfo=UTC)  # 22:30 KST


def _at(instant: datetime) -> str:
    return quote(instant.isoformat())


async def _ask(client, headers, subject: str, channel: str, at: datetime | None = None) -> dict:
    query = f"?at={_at(at)}" if at else ""
    response = await client.get(f"/v1/subjects/{subject}/permissions/{channel}{query}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def _codes(answer: dict) -> dict[str, dict]:
    return {r["code"]: r for r in answer["reasons"]}


async def _grant(client, headers, subject: str, granted: set[str], point: str = "signup") -> dict:
    body = decisions_for(await form(client, headers, point), granted)
    response = await client.post(f"/v1/subjects/{subject}/consents", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return {e["purpose"]: e for e in response.json()["events"]}


async def test_network_act_50_1_consent_to_the_channel_and_to_marketing_lets_a_daytime_ad_go(client, auth, demo):
    headers = auth(demo)
    events = await _grant(client, headers, "p-1", {"marketing", "marketing-sms"})
    answer = await _ask(client, headers, "p-1", "sms", DAY + timedelta(days=400))
    assert answer["allowed"] is True
    codes = _codes(answer)
    assert set(codes) == {"marketing_granted", "channel_granted"}
    assert codes["channel_granted"]["event"]["id"] == events["marketing-sms"]["id"]
    assert codes["channel_granted"]["event"]["hash"] == events["marketing-sms"]["hash"]
    assert codes["marketing_granted"]["article"] == "PIPA Art. 22(1)7"
    assert answer["at_local"].endswith("+09:00")


async def test_network_act_50_1_no_consent_no_ad(client, auth, demo):
    headers = auth(demo)
    await _grant(client, headers, "p-2", set(), point="insurance")  # never asked about marketing
    answer = await _ask(client, headers, "p-2", "kakao", DAY + timedelta(days=400))
    assert answer["allowed"] is False
    assert {"marketing_no_consent", "channel_no_consent"} <= set(_codes(answer))
    unknown = await _ask(client, headers, "never-seen", "sms")
    assert unknown["allowed"] is False and "subject_unknown" in _codes(unknown)


async def test_network_act_50_2_a_refusal_or_withdrawal_binds_from_its_instant(client, auth, demo):
    headers = auth(demo)
    await _grant(client, headers, "p-3", {"marketing", "marketing-sms"})
    now = datetime.now(UTC)
    response = await client.post("/v1/subjects/p-3/consents/marketing-sms/withdraw", json={}, headers=headers)
    assert response.status_code == 200, response.text
    withdrawal = response.json()["results"][0]["event"]
    before = await _ask(client, headers, "p-3", "sms", now)  # the past as it was: allowed then (if daytime)
    assert "channel_granted" in _codes(before)
    after = await _ask(client, headers, "p-3", "sms")
    assert after["allowed"] is False
    reason = _codes(after)["channel_withdrawn"]
    assert reason["event"]["id"] == withdrawal["id"] and "50(2)" in reason["article"]
    email = await _ask(client, headers, "p-3", "email")  # refused at the first ask
    assert email["allowed"] is False and "channel_refused" in _codes(email)


async def test_pipa_22_1_7_a_withdrawn_marketing_consent_stops_every_channel(client, auth, demo):
    headers = auth(demo)
    await _grant(client, headers, "p-4", {"marketing", "marketing-sms", "marketing-email"})
    assert (await client.post("/v1/subjects/p-4/consents/marketing/withdraw", json={}, headers=headers)
            ).status_code == 200
    for channel in ("sms", "email"):
        answer = await _ask(client, headers, "p-4", channel)
        assert answer["allowed"] is False
        codes = _codes(answer)
        assert "marketing_withdrawn" in codes and "channel_granted" in codes  # the channel alone would allow


async def test_network_act_50_3_night_time_needs_its_own_consent_and_email_is_exempt(client, auth, demo):
    headers = auth(demo)
    await _grant(client, headers, "p-5", {"marketing", "marketing-sms", "marketing-email"})
    later = timedelta(days=400)
    sms = await _ask(client, headers, "p-5", "sms", NIGHT + later)
    assert sms["allowed"] is False and "night_refused" in _codes(sms)
    assert "22:30" in _codes(sms)["night_refused"]["detail"]
    email = await _ask(client, headers, "p-5", "email", NIGHT + later)
    assert email["allowed"] is True and "night_exempt" in _codes(email)
    # consent to night-time sending on the preference page
    await _grant(client, headers, "p-5", {"marketing", "marketing-sms", "marketing-email", "marketing-night"},
                 point="preferences")
    assert (await _ask(client, headers, "p-5", "sms", NIGHT + later))["allowed"] is True
    # the window's edges, in KST: 07:59 is night, 08:00 and 20:59 are day, 21:00 is night
    for hour, minute, night in ((7, 59, True), (8, 0, False), (20, 59, False), (21, 0, True)):
        instant = datetime(2027, 12, 20, hour, minute, tzinfo=UTC) - timedelta(hours=9)
        codes = _codes(await _ask(client, headers, "p-5", "sms", instant))
        assert ("night_granted" in codes) is night, (hour, minute, codes)


async def test_a_processor_token_with_permissions_read_asks_and_nothing_else(client, auth, demo, new_tenant):
    await _grant(client, auth(demo), "p-6", {"marketing", "marketing-sms"})
    processor = auth(demo, "permissions:read", sub="alimi")
    assert (await client.get("/v1/subjects/p-6/permissions/sms", headers=processor)).status_code == 200
    assert (await client.get("/v1/subjects/p-6/consents/history", headers=processor)).status_code == 403
    assert (await client.get("/v1/subjects/p-6/permissions/sms", headers=auth(demo, "catalog:read"))
            ).status_code == 403
    assert (await client.get("/v1/subjects/p-6/permissions/sms")).status_code == 401
    # another tenant's token sees nothing of this one's subject
    other = await new_tenant()
    answer = await _ask(client, auth(other, "permissions:read"), "p-6", "sms")
    assert answer["allowed"] is False and "subject_unknown" in _codes(answer)


async def test_only_advertising_channels_are_asked_about(client, auth, demo):
    for channel in ("night", "fax"):
        response = await client.get(f"/v1/subjects/p-7/permissions/{channel}", headers=auth(demo))
        assert response.status_code == 422, response.text
    response = await client.get("/v1/subjects/p-7/permissions/sms?at=2026-11-20T10:00:00", headers=auth(demo))
    assert response.status_code == 422  # an instant without an offset is ambiguous


# --- the 6-month existing-customer exception (Network Act Art. 50(1)1) ----------------------------


async def _transaction(client, headers, subject: str, goods: str, at: datetime) -> dict:
    response = await client.post(f"/v1/subjects/{subject}/transactions", headers=headers,
                                 json={"goods_category": goods, "transacted_at": at.isoformat()})
    assert response.status_code == 201, response.text
    return response.json()


async def test_network_act_50_1_1_same_goods_within_6_months_need_no_prior_consent(client, auth, demo):
    headers = auth(demo)
    await _grant(client, headers, "c-1", set(), point="insurance")  # never asked about marketing
    bought = datetime(2026, 8, 31, 3, 0, tzinfo=UTC)  # 12:00 KST
    made = await _transaction(client, headers, "c-1", "concert-tickets", bought)
    assert (made["goods_category"], made["recorded_by"]) == ("concert-tickets", "tester")

    async def ask(at: datetime, goods: str = "concert-tickets") -> dict:
        response = await client.get(f"/v1/subjects/c-1/permissions/sms?at={_at(at)}&category={goods}",
                                    headers=headers)
        assert response.status_code == 200, response.text
        return response.json()

    inside = await ask(datetime(2027, 2, 28, 3, 0, tzinfo=UTC))  # 31 August + 6 calendar months
    assert inside["allowed"] is True
    reasons = [r for r in inside["reasons"] if r["code"] == "existing_customer"]
    assert len(reasons) == 2 and reasons[0]["article"] == "Network Act Art. 50(1)1"  # umbrella and channel
    assert reasons[0]["transaction"]["id"] == made["id"]
    assert (await ask(datetime(2027, 3, 1, 3, 0, tzinfo=UTC)))["allowed"] is False  # past the 6 months
    assert (await ask(datetime(2026, 12, 1, 3, 0, tzinfo=UTC), "insurance"))["allowed"] is False  # other goods
    assert (await ask(datetime(2026, 8, 30, 3, 0, tzinfo=UTC)))["allowed"] is False  # before the purchase
    night = await ask(datetime(2026, 12, 1, 13, 30, tzinfo=UTC))  # 22:30 KST: night consent still needed
    assert night["allowed"] is False and "night_not_asked" not in _codes(night)
    no_category = await ask_without_category(client, headers, "c-1", datetime(2026, 12, 1, 3, 0, tzinfo=UTC))
    assert no_category["allowed"] is False  # the exception is for the goods bought, which the caller names


async def ask_without_category(client, headers, subject: str, at: datetime) -> dict:
    return await _ask(client, headers, subject, "sms", at)


async def test_network_act_50_2_a_refusal_binds_an_existing_customer_too(client, auth, demo):
    headers = auth(demo)
    await _grant(client, headers, "c-2", set())  # every marketing consent refused at sign-up
    await _transaction(client, headers, "c-2", "concert-tickets", datetime.now(UTC) - timedelta(days=10))
    response = await client.get("/v1/subjects/c-2/permissions/sms?category=concert-tickets", headers=headers)
    answer = response.json()
    assert answer["allowed"] is False
    assert "existing_customer" not in _codes(answer) and "channel_refused" in _codes(answer)


async def test_a_transaction_is_append_only_plausible_and_holds_no_personal_data(client, auth, demo, db):
    headers = auth(demo)
    future = datetime.now(UTC) + timedelta(days=1)
    response = await client.post("/v1/subjects/c-3/transactions", headers=headers,
                                 json={"goods_category": "tickets", "transacted_at": future.isoformat()})
    assert response.status_code == 422, response.text
    response = await client.post("/v1/subjects/c-3/transactions", headers=headers,
                                 json={"goods_category": "tickets", "transacted_at": "2026-01-01T00:00:00+09:00",
                                       "phone": "010-0000-0000"})
    assert response.status_code == 422  # nothing but the goods and the instant
    made = await _transaction(client, headers, "c-3", "tickets", datetime(2026, 1, 1, tzinfo=UTC))
    listed = (await client.get("/v1/subjects/c-3/transactions", headers=headers)).json()
    assert [t["id"] for t in listed] == [made["id"]]
    import asyncpg
    import pytest
    with pytest.raises(asyncpg.PostgresError):
        await db.execute("UPDATE subject_transactions SET goods_category = 'x' WHERE id = $1::uuid", made["id"])
    assert (await client.get("/v1/subjects/nobody/transactions", headers=headers)).status_code == 404


async def test_a_processor_token_asks_only_about_the_channels_its_endpoints_serve(client, auth, demo, settings, db):
    """Issue 9 point 4: the claim `processor` limits a token to its endpoints' channels."""
    from app.auth.tokens import issue

    def processor_token(key: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + issue(settings, tenant=demo, sub=f"{key}-bot",
                                                   scopes=["permissions:read"], extra={"processor": key})}

    await _grant(client, auth(demo), "q-1", {"marketing", "marketing-sms"})
    sms_sender = processor_token("alimi")
    # no endpoint yet: it serves no channel
    assert (await client.get("/v1/subjects/q-1/permissions/sms", headers=sms_sender)).status_code == 403
    # its SMS endpoint (written directly: registering one resolves its host, which tests cannot)
    await db.execute("INSERT INTO webhook_endpoints (tenant_id, processor_id, url, channels, secret) VALUES "
                     "($1, (SELECT id FROM processors WHERE tenant_id = $1 AND key = 'alimi'), "
                     "'https://sms.example.com/hooks', '{sms}', 'whsec')", demo)
    assert (await client.get("/v1/subjects/q-1/permissions/sms", headers=sms_sender)).status_code == 200
    refused = await client.get("/v1/subjects/q-1/permissions/email", headers=sms_sender)
    assert refused.status_code == 403 and "sms" in refused.json()["detail"]
    assert (await client.post("/v1/permissions/email/check", headers=sms_sender, json={"subject_ids": ["q-1"]})
            ).status_code == 403
    assert (await client.post("/v1/permissions/sms/check", headers=sms_sender, json={"subject_ids": ["q-1"]})
            ).status_code == 200
    # the tenant's own tokens are not limited
    assert (await client.get("/v1/subjects/q-1/permissions/email", headers=auth(demo, "permissions:read"))
            ).status_code == 200
