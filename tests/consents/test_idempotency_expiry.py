"""An Idempotency-Key answers replays for IDEMPOTENCY_KEY_TTL_SECONDS (default 7 days) after its
first use; after that it behaves as a key never used."""

from __future__ import annotations

import dataclasses

import httpx

from app.main import create_app
from tests.helpers import decisions_for, event_count, form


async def _age(db, tenant: str, key: str, days: float) -> None:
    updated = await db.execute(
        "UPDATE idempotency_keys SET created_at = now() - make_interval(secs => $3) WHERE tenant_id = $1 AND key = $2",
        tenant, key, days * 86400)
    assert updated == "UPDATE 1"


async def test_a_key_within_seven_days_still_replays(client, auth, demo, db):
    keyed = {**auth(demo), "Idempotency-Key": "fresh-key"}
    body = decisions_for(await form(client, keyed), {"marketing-sms"})
    first = await client.post("/v1/subjects/ttl-1/consents", json=body, headers=keyed)
    assert first.status_code == 201, first.text
    await _age(db, demo, "fresh-key", 6.9)
    again = await client.post("/v1/subjects/ttl-1/consents", json=body, headers=keyed)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json() == first.json()
    assert await event_count(db, demo, "ttl-1") == 11


async def test_an_expired_key_reruns_the_request(client, auth, demo, db):
    keyed = {**auth(demo), "Idempotency-Key": "old-key"}
    body = decisions_for(await form(client, keyed), {"marketing-sms"})
    first = await client.post("/v1/subjects/ttl-2/consents", json=body, headers=keyed)
    assert first.status_code == 201, first.text
    await _age(db, demo, "old-key", 7.1)
    again = await client.post("/v1/subjects/ttl-2/consents", json=body, headers=keyed)
    assert again.status_code == 201, again.text
    assert "idempotent-replayed" not in again.headers
    assert again.json()["request_id"] != first.json()["request_id"]
    assert await event_count(db, demo, "ttl-2") == 22
    # the re-run stored its own result under the key, which now replays that one
    third = await client.post("/v1/subjects/ttl-2/consents", json=body, headers=keyed)
    assert third.headers.get("Idempotent-Replayed") == "true"
    assert third.json() == again.json()


async def test_an_expired_key_may_carry_another_request(client, auth, demo, db):
    keyed = {**auth(demo), "Idempotency-Key": "reused-key"}
    body = decisions_for(await form(client, keyed))
    assert (await client.post("/v1/subjects/ttl-3/consents", json=body, headers=keyed)).status_code == 201
    await _age(db, demo, "reused-key", 8)
    withdrawn = await client.post("/v1/subjects/ttl-3/consents/analytics/withdraw", headers=keyed)
    assert withdrawn.status_code == 200, withdrawn.text  # not 422 "used with another body or path"


async def test_the_lifetime_is_a_setting(settings, auth, demo, db):
    short = create_app(dataclasses.replace(settings, idempotency_key_ttl_seconds=60))
    async with short.router.lifespan_context(short), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=short), base_url="http://testserver") as client:
        keyed = {**auth(demo), "Idempotency-Key": "short-key"}
        body = decisions_for(await form(client, keyed))
        assert (await client.post("/v1/subjects/ttl-4/consents", json=body, headers=keyed)).status_code == 201
        await _age(db, demo, "short-key", 30 / 86400)
        replayed = await client.post("/v1/subjects/ttl-4/consents", json=body, headers=keyed)
        assert replayed.headers.get("Idempotent-Replayed") == "true"
        await _age(db, demo, "short-key", 90 / 86400)
        rerun = await client.post("/v1/subjects/ttl-4/consents", json=body, headers=keyed)
        assert rerun.status_code == 201 and "idempotent-replayed" not in rerun.headers
    assert await event_count(db, demo, "ttl-4") == 22
