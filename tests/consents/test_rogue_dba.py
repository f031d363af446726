"""A rogue DBA (superuser, triggers off) attacks one subject's record; verify names each break.

Each attack is one the service's own database account could do before the owner/runtime split
(issue: proof); tests/core/test_roles.py shows the runtime role is now refused each of them, and
these show that even a superuser who goes around the database's own rules is caught. A rewrite of
the whole chain *and* the log with recomputed hashes is caught by the seals here and by the signed
checkpoints (tests/proof).
"""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest

from app.consents import chain
from tests.helpers import insert_event_sql, last_event, next_event, sign_up


@pytest.fixture
async def subject(client, auth, demo):
    headers = auth(demo)
    response = await sign_up(client, headers, "victim", granted={"marketing", "marketing-sms"})
    assert response.status_code == 201, response.text
    response = await client.post("/v1/subjects/victim/consents/marketing-sms/withdraw", headers=headers)
    assert response.status_code == 200, response.text
    return headers


async def verify(client, headers, member="victim") -> dict:
    response = await client.get(f"/v1/subjects/{member}/consents/verify", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def kinds(report: dict) -> set[str]:
    return {b["kind"] for b in report["breaks"]}


async def as_rogue(db, *statements: tuple) -> None:
    """Run statements as a superuser with every trigger off, in one transaction."""
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        for sql, *args in statements:
            await db.execute(sql, *args)


async def subject_row(db, tenant: str, member: str = "victim"):
    return await db.fetchrow("SELECT * FROM subjects WHERE tenant_id = $1 AND external_id = $2", tenant, member)


async def test_untouched_record_verifies(client, subject):
    report = await verify(client, subject)
    assert report["valid"] and report["breaks"] == [] and report["events_checked"] == 12
    assert report["duty_records_checked"] > 0  # marketing acts owe notices (docs/duties.md)
    assert report["log"]["logged"] + report["log"]["pending"] == 12 + report["duty_records_checked"]


async def test_event_inserted_past_the_head_is_reported(client, db, demo, subject):
    sql, values = insert_event_sql(next_event(await last_event(db, demo, "victim"), demo, "victim"))
    await as_rogue(db, (sql, *values))
    history = (await client.get("/v1/subjects/victim/consents/history?limit=500", headers=subject)).json()
    assert history["items"][-1]["seq"] == 13  # it shows in the history...
    report = await verify(client, subject)
    assert not report["valid"]
    # ...but not past verify: the head does not end there, the seal is a copy of another event's,
    # the current state does not fold from the events, and the log never saw it.
    assert {"head_mismatch", "unsealed_event", "state_mismatch", "not_in_log"} <= kinds(report)


async def test_swapped_member_ids_break_both_chains(client, db, demo, subject):
    assert (await sign_up(client, subject, "other")).status_code == 201
    victim, other = await subject_row(db, demo), await subject_row(db, demo, "other")
    await as_rogue(
        db, ("UPDATE subjects SET external_id = 'swap-tmp' WHERE id = $1", victim["id"]),
        ("UPDATE subjects SET external_id = 'victim' WHERE id = $1", other["id"]),
        ("UPDATE subjects SET external_id = 'other' WHERE id = $1", victim["id"]),
    )
    for member in ("victim", "other"):
        report = await verify(client, subject, member)
        assert "altered_event" in kinds(report), report
        assert "member id" in report["first_break"]["detail"]


async def test_state_rewritten_to_granted_is_reported(client, db, demo, subject):
    head = await subject_row(db, demo)
    await as_rogue(db, ("UPDATE consent_states SET status = 'granted' WHERE subject_id = $1 AND purpose_id = "
                        "(SELECT id FROM purposes WHERE tenant_id = $2 AND key = 'marketing-sms')", head["id"], demo))
    state = (await client.get("/v1/subjects/victim/consents", headers=subject)).json()
    assert {c["purpose"]: c["status"] for c in state["consents"]}["marketing-sms"] == "granted"  # it does answer so
    report = await verify(client, subject)
    assert kinds(report) == {"state_mismatch"}
    assert report["first_break"]["purpose"] == "marketing-sms"


async def test_deleted_withdrawal_with_rewound_head_is_reported(client, db, demo, subject):
    head = await subject_row(db, demo)
    last = await db.fetchrow("SELECT * FROM consent_events WHERE subject_id = $1 AND seq = $2",
                             head["id"], head["last_seq"])
    previous = await db.fetchrow("SELECT * FROM consent_events WHERE subject_id = $1 AND purpose_id = $2 "
                                 "AND seq < $3 ORDER BY seq DESC LIMIT 1", head["id"], last["purpose_id"], last["seq"])
    before = await db.fetchrow("SELECT * FROM consent_events WHERE subject_id = $1 AND seq = $2",
                               head["id"], head["last_seq"] - 1)
    await as_rogue(
        db, ("DELETE FROM consent_events WHERE id = $1", last["id"]),
        ("UPDATE subjects SET last_seq = $2, last_hash = $3 WHERE id = $1", head["id"], before["seq"], before["hash"]),
        ("UPDATE consent_states SET status = 'granted', version = $3, last_event_id = $4 "
         "WHERE subject_id = $1 AND purpose_id = $2", head["id"], last["purpose_id"], previous["version"],
         previous["id"]),
    )
    state = (await client.get("/v1/subjects/victim/consents", headers=subject)).json()
    assert {c["purpose"]: c["status"] for c in state["consents"]}["marketing-sms"] == "granted"
    report = await verify(client, subject)
    # The chain, head and state now agree with each other; the log still holds the withdrawal, and
    # the duties it caused (its 14-day result notice) still link to its hash (docs/duties.md).
    assert kinds(report) == {"missing_event", "broken_duty_link"}
    assert any(str(last["id"]) in b["detail"] for b in report["breaks"] if b["kind"] == "missing_event")


async def test_chain_rebuilt_end_to_end_fails_its_seals(client, db, demo, subject):
    head = await subject_row(db, demo)
    events = [dict(r) for r in await db.fetch("SELECT * FROM consent_events WHERE subject_id = $1 ORDER BY seq",
                                              head["id"])]
    # Drop the withdrawal, renumber nothing (it was last), recompute every hash and link from seq 1,
    # with a changed method on the first event so that every hash differs from the original.
    events = events[:-1]
    events[0]["method"] = "paper"
    previous = None
    statements = [("DELETE FROM ledger_log_queue WHERE subject_id = $1", head["id"]),
                  ("DELETE FROM ledger_log WHERE subject_id = $1", head["id"])]
    for event in events:
        event["prev_hash"] = previous
        event["hash"] = previous = chain.document_hash(chain.document(event, tenant=demo, subject_ref="victim"))
        statements.append(("UPDATE consent_events SET method = $2, prev_hash = $3, hash = $4 WHERE id = $1",
                           event["id"], event["method"], event["prev_hash"], event["hash"]))
    statements += [
        ("DELETE FROM consent_events WHERE subject_id = $1 AND seq > $2", head["id"], len(events)),
        ("UPDATE subjects SET last_seq = $2, last_hash = $3 WHERE id = $1", head["id"], len(events), previous),
        ("DELETE FROM consent_states WHERE subject_id = $1", head["id"]),
        ("""INSERT INTO consent_states (subject_id, purpose_id, tenant_id, status, version, since, last_event_id,
                                        notice_id, collection_point_id)
            SELECT DISTINCT ON (purpose_id) subject_id, purpose_id, tenant_id, status, version, recorded_at, id,
                   notice_id, collection_point_id
            FROM consent_events WHERE subject_id = $1 ORDER BY purpose_id, seq DESC""", head["id"]),
    ]
    await as_rogue(db, *statements)
    report = await verify(client, subject)
    # Every event hash changed, so each duty's first record no longer links to the hash of the event
    # that caused it (docs/duties.md): the duties' own evidence gives the rewrite away too.
    assert kinds(report) == {"unsealed_event", "not_in_log", "broken_duty_link"}
    assert sum(b["kind"] == "unsealed_event" for b in report["breaks"]) == len(events)
    caused = await db.fetchval("SELECT count(*) FROM duty_records WHERE subject_id = $1 AND seq = 1 "
                               "AND cause_event_id IS NOT NULL", head["id"])
    assert caused > 0 and sum(b["kind"] == "broken_duty_link" for b in report["breaks"]) == caused


async def test_altered_notice_text_and_disclosures_are_reported(client, db, demo, subject):
    head = await subject_row(db, demo)
    event = await db.fetchrow("SELECT * FROM consent_events WHERE subject_id = $1 AND seq = 1", head["id"])
    await as_rogue(
        db, ("UPDATE notices SET body = body || ' (개정)' WHERE id = $1", event["notice_id"]),
        ("UPDATE purpose_disclosures SET content = jsonb_set(content, '{ko,retention}', '\"영구\"') "
         "WHERE purpose_id = $1 AND hash = $2", event["purpose_id"], event["disclosure_hash"]),
    )
    report = await verify(client, subject)
    assert {"notice_mismatch", "disclosure_mismatch"} <= kinds(report)
    assert all(b["kind"] in ("notice_mismatch", "disclosure_mismatch") for b in report["breaks"])


async def test_forged_raw_evidence_is_reported_and_purge_keeps_proof(client, db, demo, subject):
    head = await subject_row(db, demo)
    rows = await db.fetch("SELECT * FROM consent_evidence WHERE subject_id = $1 ORDER BY id", head["id"])
    assert rows and all(r["ip"] == "203.0.113.7" for r in rows)
    await as_rogue(db, ("UPDATE consent_evidence SET ip = '198.51.100.1' WHERE id = $1", rows[0]["id"]))
    report = await verify(client, subject)
    assert kinds(report) == {"evidence_mismatch"}
    await as_rogue(db, ("UPDATE consent_evidence SET ip = '203.0.113.7' WHERE id = $1", rows[0]["id"]))
    assert (await verify(client, subject))["valid"]
    # Retention ends: the raw values go (through the ledger's own function), the proof stays valid.
    purged = await db.fetchval("SELECT ledger_purge_evidence(now(), 'test')")
    assert purged >= len(rows)
    after = await db.fetch("SELECT * FROM consent_evidence WHERE subject_id = $1 ORDER BY id", head["id"])
    assert all(r["ip"] is None and r["user_agent"] is None and r["purged_at"] for r in after)
    assert [r["commitment"] for r in after] == [r["commitment"] for r in rows]
    assert (await verify(client, subject))["valid"]
    evidence = (await client.get("/v1/subjects/victim/evidence", headers=subject)).json()
    assert evidence["items"] and all(i["ip"] is None and i["purged_at"] for i in evidence["items"])


async def test_time_running_backwards_is_reported(client, db, demo, subject):
    head = await subject_row(db, demo)
    await as_rogue(db, ("UPDATE consent_events SET recorded_at = recorded_at - interval '1 day' "
                        "WHERE subject_id = $1 AND seq = $2", head["id"], head["last_seq"]))
    report = await verify(client, subject)
    assert {"time_reversed", "altered_event"} <= kinds(report)


def test_event_hash_is_sha256_of_rfc8785_of_the_printed_event():
    """What the API prints is exactly what is hashed: recompute with the standard library only."""
    import rfc8785

    event = {"chain_version": 2, "tenant": "t", "subject_id": "회원-1", "seq": 1, "reason": None, "prev_hash": None}
    assert chain.document_hash({**event, "hash": "ignored"}) == hashlib.sha256(rfc8785.dumps(event)).hexdigest()
    assert json.loads(rfc8785.dumps(event)) == event


async def test_events_forged_as_version_1_are_reported(client, db, demo, subject):
    """Version 1 events carry no seal; they may only be the oldest history. A DBA who writes new ones
    (after version 2 events, or for a new member once the log holds version 2 events) is caught."""
    assert (await client.post("/v1/audit/checkpoints", headers=subject)).status_code == 201
    head = await subject_row(db, demo)
    last = dict(await db.fetchrow("SELECT * FROM consent_events WHERE subject_id = $1 AND seq = $2",
                                  head["id"], head["last_seq"]))

    def legacy(base: dict, **changes) -> dict:
        event = {**base, "id": uuid.uuid4(), "chain_version": 1, "seal": None, **changes}
        event["hash"] = chain.legacy_hash(chain.legacy_payload(event))
        return event

    forged = legacy(last, seq=last["seq"] + 1, prev_hash=last["hash"], action="granted", status="granted",
                    previous_status="withdrawn", version=last["version"] + 1, evidence_id=None,
                    evidence_commitment=None)
    sql, values = insert_event_sql(forged)
    await as_rogue(
        db, (sql, *values),
        ("UPDATE subjects SET last_seq = $2, last_hash = $3 WHERE id = $1", head["id"], forged["seq"], forged["hash"]),
        ("UPDATE consent_states SET status = 'granted', version = $3, last_event_id = $4 "
         "WHERE subject_id = $1 AND purpose_id = $2", head["id"], forged["purpose_id"], forged["version"],
         forged["id"]),
        ("INSERT INTO ledger_log_queue (event_id, tenant_id, subject_id, event_hash) VALUES ($1, $2, $3, $4)",
         forged["id"], demo, head["id"], forged["hash"]),
    )
    report = await verify(client, subject)
    assert kinds(report) == {"legacy_after_v2"}, report["breaks"]
