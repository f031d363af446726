"""What was shown is what is recorded (notice version, disclosures), the runtime role's own inserts,
time order within a subject, and signed receipts (issue: proof, points 5, 6, 8)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from joserfc import jws
from joserfc.jwk import KeySet

from app.consents import chain
from app.proof import keys, merkle
from tests.helpers import decisions_for, form, insert_event, last_event, next_event, sign_up

# RFC 9864 renames EdDSA to Ed25519; PyJWT (our signer) does not speak the new name yet (docs/proof.md)
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")


async def _newer_notice(client, headers, effective_at: datetime) -> dict:
    response = await client.post("/v1/notices", headers=headers, json={
        "key": "privacy-policy", "version": f"v-{uuid.uuid4().hex[:6]}", "title": "개인정보 처리방침 (개정)",
        "body": "개정된 처리방침 본문", "effective_at": effective_at.isoformat(), "publish": True,
        # takes effect at once, inside the 7-day notice period: forced, with the reason on record
        "force_reason": "test: a version switch inside the form's grace window"})
    assert response.status_code == 201, response.text
    return response.json()


async def test_a_superseded_notice_is_409_naming_the_current_one(client, auth, demo):
    headers = auth(demo)
    body = decisions_for(await form(client, headers))
    newer = await _newer_notice(client, headers, datetime.now(UTC) - timedelta(hours=1))
    response = await client.post("/v1/subjects/n-1/consents", json=body, headers=headers)
    assert response.status_code == 409, response.text
    problem = response.json()
    assert problem["current_notice"] == {"id": newer["id"], "key": "privacy-policy", "version": newer["version"]}
    assert problem["errors"][0]["field"] == "body.notice_id"
    assert newer["version"] in problem["errors"][0]["reason"]
    # the form now shows the newer version, and with it the request goes through
    fresh = decisions_for(await form(client, headers))
    assert fresh["notice_id"] == newer["id"]
    assert (await client.post("/v1/subjects/n-1/consents", json=fresh, headers=headers)).status_code == 201


async def test_within_the_grace_window_the_older_notice_is_recorded_as_superseded(client, auth, demo):
    headers = auth(demo)
    body = decisions_for(await form(client, headers))  # loaded just before the switch
    newer = await _newer_notice(client, headers, datetime.now(UTC) - timedelta(seconds=5))
    response = await client.post("/v1/subjects/n-2/consents", json=body, headers=headers)
    assert response.status_code == 201, response.text
    notice = response.json()["events"][0]["notice"]
    assert notice["id"] == body["notice_id"] and notice["superseded_at"] is not None
    assert datetime.fromisoformat(notice["superseded_at"]) == datetime.fromisoformat(newer["effective_at"])


async def test_the_grace_window_brings_back_only_the_version_just_replaced(client, auth, demo):
    headers = auth(demo)
    oldest = decisions_for(await form(client, headers))
    await _newer_notice(client, headers, datetime.now(UTC) - timedelta(hours=1))  # replaced the oldest an hour ago
    middle = decisions_for(await form(client, headers))
    await _newer_notice(client, headers, datetime.now(UTC) - timedelta(seconds=5))
    assert (await client.post("/v1/subjects/n-3/consents", json=oldest, headers=headers)).status_code == 409
    assert (await client.post("/v1/subjects/n-3/consents", json=middle, headers=headers)).status_code == 201


async def test_every_decision_echoes_the_disclosures_it_showed(client, auth, demo, db):
    headers = auth(demo)
    shown = await form(client, headers)
    body = decisions_for(shown)
    del body["decisions"][0]["disclosure_hash"]
    body["decisions"][1]["disclosure_hash"] = "0" * 64
    response = await client.post("/v1/subjects/d-1/consents", json=body, headers=headers)
    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["errors"]}
    assert fields == {"body.decisions[0].disclosure_hash", "body.decisions[1].disclosure_hash"}
    # the catalog's wording changes between the form and the submit: refused, nothing recorded
    key = shown["purposes"][2]["key"]
    purpose = (await client.get(f"/v1/purposes/{key}", headers=headers)).json()
    purpose["disclosures"]["ko"]["retention"] = "5년"
    patched = await client.patch(f"/v1/purposes/{key}", headers=headers,
                                 json={"disclosures": purpose["disclosures"]})
    assert patched.status_code == 200, patched.text
    response = await client.post("/v1/subjects/d-1/consents", json=decisions_for(shown), headers=headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body.decisions[2].disclosure_hash"
    assert await db.fetchval("SELECT count(*) FROM subjects WHERE tenant_id = $1 AND external_id = 'd-1'",
                             demo) == 0
    # what is stored is the hash the person was shown
    response = await client.post("/v1/subjects/d-1/consents", json=decisions_for(await form(client, headers)),
                                 headers=headers)
    assert response.status_code == 201
    assert response.json()["events"][2]["disclosure_hash"] == patched.json()["disclosure_hash"]




@pytest.mark.parametrize("case", ["wrong-seq", "wrong-link", "earlier-time", "other-tenant", "version-1", "unsealed"])
async def test_the_runtime_role_cannot_append_out_of_chain(client, auth, demo, db, runtime_db, new_tenant, case):
    """Logged in as the service's own role: an event that does not continue the subject's chain
    exactly (seq, link, time, tenant, chain version, a seal present) is refused by the database."""
    headers = auth(demo)
    assert (await sign_up(client, headers, "r-1")).status_code == 201
    last = await last_event(db, demo, "r-1")
    forged = next_event(last, demo, "r-1")
    if case == "wrong-seq":
        forged["seq"] += 1
    elif case == "wrong-link":
        forged["prev_hash"] = "f" * 64
    elif case == "earlier-time":
        forged["recorded_at"] = last["recorded_at"] - timedelta(microseconds=1)
    elif case == "other-tenant":
        forged["tenant_id"] = await new_tenant()
    elif case == "version-1":
        forged["chain_version"] = 1
    else:
        forged["seal"] = None
    with pytest.raises((asyncpg.CheckViolationError, asyncpg.ForeignKeyViolationError)):
        await insert_event(runtime_db, forged)
    assert (await client.get("/v1/subjects/r-1/consents/verify", headers=headers)).json()["valid"]


async def test_an_in_chain_insert_by_the_runtime_role_is_reported_as_not_the_services(client, auth, demo, db,
                                                                                       runtime_db):
    """The database cannot tell the service's own INSERT from another holder of its account; the
    seal can: that key is not in the database. The event stays in the log, so it cannot vanish."""
    headers = auth(demo)
    assert (await sign_up(client, headers, "r-2")).status_code == 201
    last = await last_event(db, demo, "r-2")
    await insert_event(runtime_db, next_event(last, demo, "r-2", seal="0" * 64))
    report = (await client.get("/v1/subjects/r-2/consents/verify", headers=headers)).json()
    assert [b["kind"] for b in report["breaks"]] == ["unsealed_event"]
    assert report["breaks"][0]["seq"] == last["seq"] + 1


async def test_time_never_runs_backwards_within_a_subject(client, auth, demo, db):
    headers = auth(demo)
    assert (await sign_up(client, headers, "t-1")).status_code == 201
    head = await db.fetchrow("SELECT * FROM subjects WHERE tenant_id = $1 AND external_id = 't-1'", demo)
    # the database clock steps back (NTP, a failover to a lagging replica): the next events are
    # recorded at the subject's last time, not before it
    future = head["last_recorded_at"] + timedelta(hours=1)
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        await db.execute("UPDATE subjects SET last_recorded_at = $2 WHERE id = $1", head["id"], future)
        await db.execute("UPDATE consent_events SET recorded_at = $2 WHERE subject_id = $1 AND seq = $3",
                         head["id"], future, head["last_seq"])
    response = await client.post("/v1/subjects/t-1/consents/marketing/withdraw", headers=headers)
    assert response.status_code == 200, response.text
    recorded = [e["recorded_at"] for e in
                (await client.get("/v1/subjects/t-1/consents/history?limit=500", headers=headers)).json()["items"]]
    assert recorded == sorted(recorded)
    assert recorded[-1] == chain.format_time(future)


async def test_receipts_verify_with_the_public_key_alone(client, auth, demo, app):
    headers = auth(demo)
    response = await sign_up(client, headers, "rc-1", granted={"marketing-sms"})
    assert response.status_code == 201
    recorded = response.json()
    jwks_doc = (await client.get("/.well-known/consent-ledger/jwks.json")).json()
    # an unmodified, independent JOSE library, given nothing but the published keys
    token = jws.deserialize_compact(recorded["receipt"]["jws"], KeySet.import_key_set(jwks_doc),
                                    algorithms=["EdDSA"])
    claims = json.loads(token.payload)
    assert claims["consentReceiptID"] == recorded["receipt"]["id"] and claims["piiPrincipalId"] == "rc-1"
    assert claims["jurisdiction"] == "KR" and claims["version"] == "KI-CR-v1.1.0"
    lines = claims["services"][0]["purposes"]
    assert [(p["purpose"], p["status"], p["eventHash"]) for p in lines] == \
        [(e["purpose"], e["status"], e["hash"]) for e in recorded["events"]]
    assert all(p["disclosureHash"] for p in lines)
    bases = {p["purpose"]: (p["legalBasis"], p["consentType"]) for p in lines}
    assert bases["membership"] == ("contract", "NOTICE_ACKNOWLEDGED")  # PIPA Art. 15(1)4
    assert bases["marketing-sms"] == ("consent", "EXPLICIT")
    assert claims["notice"] == recorded["events"][0]["notice"]
    assert claims["collectionPoint"] == "signup" and claims["collectionMethod"] == "web"
    # a withdrawal gets one too; one that changes nothing gets none
    withdrawn = (await client.post("/v1/subjects/rc-1/consents/marketing-sms/withdraw", headers=headers)).json()
    assert keys.verify(withdrawn["receipt"]["jws"], jwks_doc, typ="consent-receipt+jwt")["services"][0][
        "purposes"][0]["status"] == "withdrawn"
    again = (await client.post("/v1/subjects/rc-1/consents/marketing-sms/withdraw", headers=headers)).json()
    assert again["receipt"] is None


async def test_a_receipt_later_comes_with_its_inclusion_proofs(client, auth, demo, new_tenant):
    headers = auth(demo)
    response = await client.post("/v1/subjects/rc-2/consents", headers={**headers, "Idempotency-Key": "rc-2"},
                                 json=decisions_for(await form(client, headers)))
    receipt = response.json()["receipt"]
    replay = await client.post("/v1/subjects/rc-2/consents", headers={**headers, "Idempotency-Key": "rc-2"},
                               json=decisions_for(await form(client, headers)))
    assert replay.json()["receipt"] == receipt  # a retry hands back the same receipt
    before = (await client.get(f"/v1/receipts/{receipt['id']}", headers=headers)).json()
    assert before["jws"] == receipt["jws"] and all(i["pending"] for i in before["inclusion"])
    assert (await client.post("/v1/audit/checkpoints", headers=headers)).status_code in (200, 201)
    after = (await client.get(f"/v1/receipts/{receipt['id']}", headers=headers)).json()
    claims = keys.verify(receipt["jws"], (await client.get("/.well-known/consent-ledger/jwks.json")).json())
    hashes = [p["eventHash"] for p in claims["services"][0]["purposes"]]
    assert [i["event_hash"] for i in after["inclusion"]] == hashes
    for item in after["inclusion"]:
        root = bytes.fromhex(item["checkpoint"]["root_hash"])
        assert merkle.verify_inclusion(merkle.leaf_hash(bytes.fromhex(item["event_hash"])), item["leaf_index"],
                                       item["tree_size"], [bytes.fromhex(h) for h in item["audit_path"]], root)
    assert (await client.get(f"/v1/receipts/{uuid.uuid4()}", headers=headers)).status_code == 404
    # another tenant's token does not see it, not even that it exists
    other = auth(await new_tenant())
    assert (await client.get(f"/v1/receipts/{receipt['id']}", headers=other)).status_code == 404
