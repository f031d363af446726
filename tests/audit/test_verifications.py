"""Tenant-wide verification (issue 11 point 4): the routes, and runs carried out here by the same
code the worker runs (app/audit/verify_job.py); the worker process itself and the CLI are in
test_verification_worker.py."""

from __future__ import annotations

import dataclasses

import pytest

from app.audit import verify_job
from app.proof import log as proof_log
from tests.consents.test_rogue_dba import as_rogue, subject_row
from tests.helpers import sign_up

MEMBERS = ("m-a", "m-b", "m-c", "m-d", "m-e")


@pytest.fixture
async def members(client, auth, demo):
    headers = auth(demo, "consents:write", "audit:read")
    for member in MEMBERS:
        response = await sign_up(client, headers, member, granted={"marketing", "marketing-sms"})
        assert response.status_code == 201, response.text
    response = await client.post("/v1/subjects/m-c/consents/marketing-sms/withdraw", headers=headers)
    assert response.status_code == 200, response.text
    return headers


async def carry(app, runtime_db, tenant: str, **settings) -> int:
    """Carry the tenant's run to its end here, as the worker would."""
    s = dataclasses.replace(app.state.settings, **settings)
    return await verify_job.carry_on(runtime_db, s, app.state.proof, owner=verify_job.owner_name(), tenant=tenant)


async def start(client, headers, **body) -> dict:
    response = await client.post("/v1/audit/verifications", json=body or None, headers=headers)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/audit/verifications/{response.json()['id']}"
    return response.json()


async def result(client, headers, run_id: str) -> dict:
    response = await client.get(f"/v1/audit/verifications/{run_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_clean_tenant_is_valid_with_exact_counts(app, client, runtime_db, db, demo, members):
    run = await start(client, members, batch_subjects=2)
    assert run["status"] == "running" and run["valid"] is None and run["stage"] == "subjects"
    events = await db.fetchval("SELECT count(*) FROM consent_events WHERE tenant_id = $1", demo)
    records = await db.fetchval("SELECT count(*) FROM duty_records WHERE tenant_id = $1", demo)
    assert run["progress"]["subjects_total"] == len(MEMBERS) and run["progress"]["events_total"] == events
    await proof_log.make_checkpoint(runtime_db, demo, app.state.proof)
    assert await carry(app, runtime_db, demo) == 1
    done = await result(client, members, run["id"])
    assert done["status"] == "finished" and done["valid"] is True and done["broken"] == [], (done["broken"], done["log"])
    p = done["progress"]
    assert (p["subjects_done"], p["events_done"], p["duty_records_done"], p["percent"]) == \
        (len(MEMBERS), events, records, 100.0)
    assert done["log"]["checkpoints"] == done["log"]["checkpoints_verified"] == 1 and done["log"]["breaks"] == []
    assert done["started_at"] and done["finished_at"] and done["requested_by"] == "tester"


async def test_tampered_subjects_are_listed_with_their_kind_of_break(app, client, runtime_db, db, demo, members):
    b, d = await subject_row(db, demo, "m-b"), await subject_row(db, demo, "m-d")
    await as_rogue(
        db, ("UPDATE consent_events SET status = 'withdrawn' WHERE subject_id = $1 AND seq = 2", b["id"]),
        ("DELETE FROM consent_events WHERE subject_id = $1 AND seq = 1", d["id"]))
    run = await start(client, members, batch_subjects=2)
    await carry(app, runtime_db, demo)
    done = await result(client, members, run["id"])
    assert done["valid"] is False and done["broken_total"] == 2
    broken = {s["subject_id"]: s for s in done["broken"]}
    assert set(broken) == {"m-b", "m-d"}
    assert "altered_event" in broken["m-b"]["kinds"]
    assert "missing_event" in broken["m-d"]["kinds"]
    # the same kinds the per-subject verify reports
    for member, listed in broken.items():
        one = (await client.get(f"/v1/subjects/{member}/consents/verify", headers=members)).json()
        assert sorted({x["kind"] for x in one["breaks"]}) == listed["kinds"]
        assert listed["breaks_total"] == len(one["breaks"])
    assert done["progress"]["subjects_done"] == len(MEMBERS)


@pytest.mark.parametrize("jobs", [1, 2])  # 2: subjects in worker processes, the log checked meanwhile
async def test_a_rewritten_log_fails_its_signed_checkpoint(app, client, runtime_db, db, demo, members, jobs):
    await proof_log.make_checkpoint(runtime_db, demo, app.state.proof)
    await as_rogue(db, ("UPDATE ledger_log SET event_hash = repeat('0', 64) WHERE tenant_id = $1 AND idx = 1", demo),
                   ("UPDATE ledger_checkpoints SET root_hash = repeat('1', 64) WHERE tenant_id = $1", demo))
    run = await start(client, members, batch_subjects=2)
    await carry(app, runtime_db, demo, verification_jobs=jobs)
    done = await result(client, members, run["id"])
    assert done["valid"] is False
    kinds = {x["kind"] for x in done["log"]["breaks"]}
    # the edited row is not what was signed, and its genuine signature no longer matches the log
    assert kinds == {"checkpoint_signature", "checkpoint_root"}, done["log"]
    assert [s["kinds"] for s in done["broken"]] == [["log_mismatch"]]


async def test_a_second_start_returns_the_running_run_and_a_finished_one_allows_the_next(
        app, client, runtime_db, demo, members):
    first = await start(client, members)
    again = await client.post("/v1/audit/verifications", headers=members)
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert again.headers["location"] == f"/v1/audit/verifications/{first['id']}"
    listed = (await client.get("/v1/audit/verifications", headers=members)).json()
    assert [r["id"] for r in listed["items"]] == [first["id"]]
    await carry(app, runtime_db, demo)
    second = await start(client, members)  # the first finished: a new run
    page = (await client.get("/v1/audit/verifications?limit=1", headers=members)).json()
    assert [r["id"] for r in page["items"]] == [second["id"]] and page["next_cursor"]
    page = (await client.get(f"/v1/audit/verifications?limit=1&cursor={page['next_cursor']}", headers=members)).json()
    assert [r["id"] for r in page["items"]] == [first["id"]] and page["next_cursor"] is None


async def test_another_tenant_sees_nothing_and_starts_only_its_own(client, auth, demo, members, new_tenant):
    run = await start(client, members)
    other = auth(await new_tenant(), "audit:read")
    assert (await client.get(f"/v1/audit/verifications/{run['id']}", headers=other)).status_code == 404
    assert (await client.get("/v1/audit/verifications", headers=other)).json()["items"] == []
    theirs = await start(client, other)  # their own tenant's run, not a second one of this tenant
    assert theirs["id"] != run["id"] and theirs["progress"]["subjects_total"] == 0
    assert [r["id"] for r in (await client.get("/v1/audit/verifications", headers=members)).json()["items"]] \
        == [run["id"]]


async def test_scope_and_input(client, auth, demo):
    assert (await client.post("/v1/audit/verifications", headers=auth(demo, "consents:read"))).status_code == 403
    assert (await client.post("/v1/audit/verifications")).status_code == 401
    headers = auth(demo, "audit:read")
    bad = await client.post("/v1/audit/verifications", json={"batch_subjects": 0}, headers=headers)
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
    assert "batch_subjects" in bad.text
    bad = await client.get("/v1/audit/verifications/not-a-uuid", headers=headers)
    assert bad.status_code == 422
    bad = await client.get("/v1/audit/verifications?cursor=%%%", headers=headers)
    assert bad.status_code == 422


async def test_a_log_entry_that_is_no_hash_is_a_break_and_a_run_that_cannot_go_on_ends(
        app, client, runtime_db, db, demo, members, monkeypatch):
    await proof_log.make_checkpoint(runtime_db, demo, app.state.proof)
    await as_rogue(db, ("UPDATE ledger_log SET event_hash = 'zz' WHERE tenant_id = $1 AND idx = 2", demo))
    run = await start(client, members)
    assert await carry(app, runtime_db, demo) == 1  # it finishes: no longer stuck running for ever
    done = await result(client, members, run["id"])
    assert done["status"] == "finished" and done["valid"] is False
    assert "log_entry" in {x["kind"] for x in done["log"]["breaks"]}, done["log"]

    # Anything else that would fail the same way on every retry ends the run with its error, and the
    # tenant may start the next one.
    async def broken(*args, **kwargs):
        raise ValueError("something no retry cures")

    monkeypatch.setattr(verify_job.verify_log, "check_log", broken)
    stuck = await start(client, members)
    await carry(app, runtime_db, demo)
    ended = await result(client, members, stuck["id"])
    assert ended["status"] == "finished" and ended["valid"] is None and "no retry cures" in ended["error"]
    await start(client, members)
