"""What someone holding the service's own database account (the runtime role) could do to the
Merkle log and its checkpoints, and what stops it (an outside attacker review, app/proof/log.py):

1. append an in-chain event with a bogus seal: never signed into a checkpoint (409 log-unsealed);
2. plant subtrees in ledger_log_nodes, or take leaves with ledger_log_take and write wrong subtrees
   (or none): the checkpointer recomputes the new part of the tree from the leaves, adds what is
   missing, refuses what differs (409 log-inconsistent), and is never stuck on a unique violation;
3. (a hostile tenant id) escape CHECKPOINT_DIR or overwrite a checkpoint file: refused;
4. insert a checkpoint row it did not sign: never served nor used, and later checkpoints go on;
5. hold a tenant's log lock: that tenant is skipped for the round, the others are checkpointed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from app.proof import checkpoint_files, merkle
from app.proof.checkpointer import Checkpointer
from tests.helpers import insert_event, last_event, leaf_count, leaf_hashes, next_event, sign_up


async def _sign_ups(client, headers, prefix: str, n: int) -> None:
    for i in range(n):
        response = await sign_up(client, headers, f"{prefix}-{i}", granted={"marketing-sms"})
        assert response.status_code == 201, response.text


async def _checkpoint(client, auth, tenant: str, expected: int = 201) -> dict:
    response = await client.post("/v1/audit/checkpoints", headers=auth(tenant, "audit:read"))
    assert response.status_code == expected, response.text
    return response.json()


async def _leaves(db, tenant: str) -> list[bytes]:
    rows = await db.fetch("SELECT idx, event_hash FROM ledger_log WHERE tenant_id = $1 ORDER BY idx", tenant)
    assert [r["idx"] for r in rows] == list(range(len(rows)))
    return [merkle.leaf_hash(bytes.fromhex(r["event_hash"])) for r in rows]


async def _nodes(db, tenant: str) -> dict[tuple[int, int], bytes]:
    return {(r["level"], r["idx"]): r["hash"] for r in await db.fetch(
        "SELECT level, idx, hash FROM ledger_log_nodes WHERE tenant_id = $1", tenant)}


async def _rows(db, tenant: str) -> list[int]:
    return [r["tree_size"] for r in await db.fetch(
        "SELECT tree_size FROM ledger_checkpoints WHERE tenant_id = $1 ORDER BY tree_size", tenant)]


def _type(response) -> str:
    return response.json()["type"].rsplit(":", 1)[-1]


# -- 1. events the service did not write --------------------------------------------------------------




async def test_an_event_with_a_bogus_seal_is_never_signed_into_a_checkpoint(app, client, auth, demo, db, runtime_db,
                                                                            caplog):
    await _sign_ups(client, auth(demo), "u", 2)
    first = await _checkpoint(client, auth, demo)
    last = await last_event(db, demo, "u-0")
    forged = next_event(last, demo, "u-0", seal="f" * 64)
    await insert_event(runtime_db, forged)  # the database takes it: in chain, sealed with *something*
    await _sign_ups(client, auth(demo), "v", 1)  # the service's own events after it

    caplog.set_level(logging.ERROR, logger="consent_ledger.proof")
    response = await client.post("/v1/audit/checkpoints", headers=auth(demo, "audit:read"))
    assert response.status_code == 409, response.text
    assert _type(response) == "log-unsealed"
    body = response.json()
    idx = first["tree_size"]  # the next place in the log (taken, then rolled back with everything else)
    assert body["events"] == [{"leaf_index": idx, "event_id": str(forged["id"]), "reason": "its seal is not the service's"}]
    assert str(forged["id"]) in body["detail"] and f"leaf {idx}" in body["detail"]
    assert any(r.levelno == logging.ERROR and r.getMessage().startswith("ALARM") and str(forged["id"]) in r.getMessage()
               for r in caplog.records)
    assert await _rows(db, demo) == [first["tree_size"]]  # nothing signed
    assert await db.fetchval("SELECT count(*) FROM ledger_log WHERE tenant_id = $1", demo) == first["tree_size"]
    # The worker refuses too (logged, backed off, not raised), and the latest is still the one before.
    checkpointer = Checkpointer(dataclasses.replace(app.state.settings, checkpoint_dir=None), app.state.proof)
    assert all(c["tenant"] != demo for c in await checkpointer.round())
    assert await _rows(db, demo) == [first["tree_size"]]
    assert (await client.get("/v1/audit/checkpoints/latest", headers=auth(demo, "audit:read"))).json() == first


async def test_the_owner_unblocks_a_tenant_by_keeping_a_forged_event_out_of_the_log(client, auth, demo, db,
                                                                                      runtime_db, owner_db):
    """The recovery docs/proof.md gives: the owner role takes the forged event out of the log's
    queue; the next checkpoint signs the service's own events, and the forgery stays reported by
    verify (unsealed, not in the log) for as long as its row exists."""
    await _sign_ups(client, auth(demo), "r", 1)
    first = await _checkpoint(client, auth, demo)
    forged = next_event(await last_event(db, demo, "r-0"), demo, "r-0", seal="e" * 64)
    await insert_event(runtime_db, forged)
    await _sign_ups(client, auth(demo), "s", 1)
    assert _type(await client.post("/v1/audit/checkpoints", headers=auth(demo, "audit:read"))) == "log-unsealed"

    # the runtime role may not do it; the owner may
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await runtime_db.execute("DELETE FROM ledger_log_queue WHERE event_id = $1", forged["id"])
    assert await owner_db.execute("DELETE FROM ledger_log_queue WHERE event_id = $1", forged["id"]) == "DELETE 1"
    second = await _checkpoint(client, auth, demo)
    # The service's own leaves after the forgery: s-0's events and the duty records they owe (its
    # marketing grant's result notice and reconfirmation: docs/duties.md), all of them, nothing else.
    service_leaves = await db.fetchval(
        "SELECT (SELECT count(*) FROM consent_events e JOIN subjects s ON s.id = e.subject_id"
        "        WHERE e.tenant_id = $1 AND s.external_id = 's-0')"
        " + (SELECT count(*) FROM duty_records d JOIN subjects s ON s.id = d.subject_id"
        "    WHERE d.tenant_id = $1 AND s.external_id = 's-0')", demo)
    assert service_leaves > await db.fetchval(
        "SELECT count(*) FROM consent_events e JOIN subjects s ON s.id = e.subject_id "
        "WHERE e.tenant_id = $1 AND s.external_id = 's-0'", demo)
    assert second["tree_size"] == first["tree_size"] + service_leaves == await leaf_count(db, demo) - 1
    logged = {r["event_id"] for r in await db.fetch("SELECT event_id FROM ledger_log WHERE tenant_id = $1", demo)}
    assert forged["id"] not in logged
    report = (await client.get("/v1/subjects/r-0/consents/verify", headers=auth(demo, "audit:read"))).json()
    assert not report["valid"]
    assert {b["kind"] for b in report["breaks"]} == {"unsealed_event", "not_in_log"}


async def test_at_most_twenty_unsealed_events_are_named_and_all_are_counted(client, auth, demo, db, runtime_db):
    assert (await sign_up(client, auth(demo), "w-1")).status_code == 201
    event, forged = await last_event(db, demo, "w-1"), []
    for _ in range(21):
        event = next_event(event, demo, "w-1", seal="0" * 64)
        await insert_event(runtime_db, event)
        forged.append(event["id"])
    response = await client.post("/v1/audit/checkpoints", headers=auth(demo, "audit:read"))
    assert response.status_code == 409 and _type(response) == "log-unsealed"
    body = response.json()
    assert [uuid.UUID(e["event_id"]) for e in body["events"]] == forged[:20]
    assert "holds 21 event(s) the service did not write" in body["detail"]
    assert await _rows(db, demo) == []


# -- 2. subtrees planted, leaves taken --------------------------------------------------------------


async def test_planted_subtrees_are_refused_loudly_not_a_unique_violation(client, auth, demo, db, runtime_db, caplog):
    """Before: the checkpointer's COPY hit the planted rows' primary key, a 500 forever."""
    await _sign_ups(client, auth(demo), "p", 2)  # queued, not yet placed
    size = await db.fetchval("SELECT count(*) FROM consent_events WHERE tenant_id = $1", demo)
    assert size >= 8
    await runtime_db.executemany("INSERT INTO ledger_log_nodes (tenant_id, level, idx, hash) VALUES ($1, $2, $3, $4)",
                                 [(demo, 1, 0, b"\x01" * 32), (demo, 2, 1, b"\x02" * 32),
                                  (demo, 1, 10**6, b"\x03" * 32)])  # the last one: far past the log, harmless
    caplog.set_level(logging.ERROR, logger="consent_ledger.proof")
    response = await client.post("/v1/audit/checkpoints", headers=auth(demo, "audit:read"))
    assert response.status_code == 409, response.text
    assert _type(response) == "log-inconsistent"
    assert "stored subtrees" in response.json()["detail"] and "do not match the leaves" in response.json()["detail"]
    assert response.json()["nodes"] == [{"level": 1, "index": 0}, {"level": 2, "index": 1}]
    assert any(r.levelno == logging.ERROR and "do not match the leaves" in r.getMessage() for r in caplog.records)
    assert await _rows(db, demo) == []
    # Rolled back: nothing placed, the events still queued for when it is sorted out.
    assert await db.fetchval("SELECT count(*) FROM ledger_log WHERE tenant_id = $1", demo) == 0


async def test_nodes_planted_with_the_right_hashes_are_kept_and_the_checkpoint_signs(client, auth, demo, db,
                                                                                    runtime_db):
    await _sign_ups(client, auth(demo), "q", 2)
    # The leaves to be placed, in queue order: events and duty records (docs/duties.md).
    stored = await leaf_hashes(db, demo)
    queued = [r["event_id"] for r in await db.fetch(
        "SELECT event_id FROM ledger_log_queue WHERE tenant_id = $1 ORDER BY position", demo)]
    assert sorted(queued) == sorted(stored)  # every event and duty record, once
    hashes = [stored[event_id] for event_id in queued]
    leaves = [merkle.leaf_hash(bytes.fromhex(h)) for h in hashes]
    await runtime_db.execute("INSERT INTO ledger_log_nodes (tenant_id, level, idx, hash) VALUES ($1, 1, 0, $2)",
                             demo, merkle.root(leaves[:2]))
    made = await _checkpoint(client, auth, demo)
    assert made["root_hash"] == merkle.root(leaves).hex()


async def test_leaves_taken_by_the_runtime_role_without_nodes_get_them_computed(client, auth, demo, db, runtime_db):
    headers = auth(demo, "audit:read")
    await _sign_ups(client, auth(demo), "t", 2)
    first = await _checkpoint(client, auth, demo)
    await _sign_ups(client, auth(demo), "t2", 3)
    async with runtime_db.transaction():  # what the checkpointer does, minus the subtrees
        taken = await runtime_db.fetch("SELECT idx FROM ledger_log_take($1, 1000)", demo)
    assert len(taken) > 0
    made = await _checkpoint(client, auth, demo)
    leaves = await _leaves(db, demo)
    assert made["tree_size"] == len(leaves) > first["tree_size"]
    assert made["root_hash"] == merkle.root(leaves).hex()
    expected = {(lv, ix): h for lv, ix, h in merkle.new_nodes(0, leaves, lambda lv, ix: b"")}
    assert await _nodes(db, demo) == expected
    root = bytes.fromhex(made["root_hash"])
    for index in (first["tree_size"], len(leaves) - 1, 0):
        event_id = await db.fetchval("SELECT event_id FROM ledger_log WHERE tenant_id = $1 AND idx = $2", demo, index)
        body = (await client.get("/v1/audit/proofs/inclusion", params={"event_id": str(event_id)},
                                 headers=headers)).json()
        assert merkle.verify_inclusion(leaves[index], index, made["tree_size"],
                                       [bytes.fromhex(h) for h in body["audit_path"]], root)


async def test_wrong_nodes_for_leaves_the_runtime_role_took_are_refused(client, auth, demo, db, runtime_db, caplog):
    """Before: the checkpointer signed the root of the planted subtrees, which no leaf proves into."""
    headers = auth(demo, "audit:read")
    await _sign_ups(client, auth(demo), "b", 2)
    first = await _checkpoint(client, auth, demo)
    n = first["tree_size"]
    await _sign_ups(client, auth(demo), "b2", 3)
    async with runtime_db.transaction():
        taken = await runtime_db.fetch("SELECT idx, event_hash FROM ledger_log_take($1, 1000)", demo)
        # the subtrees these leaves complete, each with a wrong hash
        new = merkle.new_nodes(n, [merkle.leaf_hash(bytes.fromhex(r["event_hash"])) for r in
                                   sorted(taken, key=lambda r: r["idx"])], lambda lv, ix: b"\x00" * 32)
        assert new
        await runtime_db.executemany("INSERT INTO ledger_log_nodes (tenant_id, level, idx, hash) VALUES ($1, $2, $3, $4)",
                                     [(demo, lv, ix, bytes(32)) for lv, ix, _ in new])
    caplog.set_level(logging.ERROR, logger="consent_ledger.proof")
    response = await client.post("/v1/audit/checkpoints", headers=headers)
    assert response.status_code == 409, response.text
    assert _type(response) == "log-inconsistent" and "do not match the leaves" in response.json()["detail"]
    assert await _rows(db, demo) == [n]
    # What was signed before still proves.
    event_id = await db.fetchval("SELECT event_id FROM ledger_log WHERE tenant_id = $1 AND idx = 0", demo)
    body = (await client.get("/v1/audit/proofs/inclusion", params={"event_id": str(event_id)}, headers=headers)).json()
    assert body["tree_size"] == n
    assert merkle.verify_inclusion((await _leaves(db, demo))[0], 0, n, [bytes.fromhex(h) for h in body["audit_path"]],
                                   bytes.fromhex(first["root_hash"]))


# -- 3. CHECKPOINT_DIR ------------------------------------------------------------------------------


HOSTILE = ["../x", "/etc/x", ".", "..", "", "a/b", "a\\b", "a\0b", "../../../../tmp/escape", "x/../../y"]


def _checkpoint_dict(tenant: str, size: int = 7, root: str = "ab" * 32) -> dict:
    return {"tenant": tenant, "tree_size": size, "root_hash": root, "issued_at": "2026-01-01T00:00:00.000000Z",
            "key_id": "k", "jws": "a.b.c"}


@pytest.mark.parametrize("tenant", HOSTILE)
def test_a_tenant_id_that_is_not_a_plain_name_gets_no_checkpoint_file(tmp_path, tenant, caplog):
    base = tmp_path / "checkpoints"
    base.mkdir()
    before = sorted(p for p in tmp_path.rglob("*"))
    caplog.set_level(logging.ERROR, logger="consent_ledger.proof")
    with pytest.raises(checkpoint_files.CheckpointFileError, match="has no checkpoint directory"):
        checkpoint_files.write_file(base, _checkpoint_dict(tenant))
    with pytest.raises(checkpoint_files.CheckpointFileError):
        checkpoint_files.newest_file(base, tenant)
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    assert any(r.levelno == logging.ERROR and "refused a checkpoint file path" in r.getMessage() for r in caplog.records)


def test_a_tenant_directory_that_is_a_symlink_out_or_to_another_tenant_is_refused(tmp_path):
    base = tmp_path / "checkpoints"
    victim = checkpoint_files.write_file(base, _checkpoint_dict("victim"))
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, base / "out")
    os.symlink(base / "victim", base / "alias")
    for tenant in ("out", "alias"):
        with pytest.raises(checkpoint_files.CheckpointFileError, match="resolves to"):
            checkpoint_files.write_file(base, _checkpoint_dict(tenant, root="cd" * 32))
        with pytest.raises(checkpoint_files.CheckpointFileError):
            checkpoint_files.newest_file(base, tenant)
    assert list(outside.iterdir()) == []
    assert json.loads(victim.read_text())["root_hash"] == "ab" * 32


def test_a_checkpoint_file_is_never_overwritten(tmp_path, caplog):
    made = _checkpoint_dict("t-1")
    path = checkpoint_files.write_file(tmp_path, made)
    assert path == tmp_path / "t-1" / "000000000007.json" and json.loads(path.read_text()) == made
    assert checkpoint_files.write_file(tmp_path, made) == path  # the same checkpoint again: fine
    caplog.set_level(logging.ERROR, logger="consent_ledger.proof")
    with pytest.raises(checkpoint_files.CheckpointFileError, match="already exists with another checkpoint"):
        checkpoint_files.write_file(tmp_path, _checkpoint_dict("t-1", root="00" * 32))
    assert json.loads(path.read_text()) == made
    assert any(r.levelno == logging.ERROR and "not overwritten" in r.getMessage() for r in caplog.records)
    assert [p.name for p in (tmp_path / "t-1").iterdir()] == [path.name]  # no temporary file left
    assert checkpoint_files.newest_file(tmp_path, "t-1") == path and checkpoint_files.newest_file(tmp_path, "t-2") is None
    with pytest.raises(checkpoint_files.CheckpointFileError):
        checkpoint_files.write_file(tmp_path, _checkpoint_dict("t-1", size=True))


# -- 4. checkpoint rows it did not sign ---------------------------------------------------------------


async def _fake_row(conn, tenant: str, size: int, like: dict, jws: str | None = None) -> None:
    await conn.execute("INSERT INTO ledger_checkpoints (tenant_id, tree_size, root_hash, issued_at, key_id, jws) "
                       "VALUES ($1, $2, $3, $4, $5, $6)", tenant, size, like["root_hash"], datetime.now(UTC),
                       like["key_id"], like["jws"] if jws is None else jws)


async def test_a_checkpoint_row_the_service_did_not_sign_is_never_served_nor_blocks_the_next(
        app, client, auth, demo, db, runtime_db, caplog):
    headers = auth(demo, "audit:read")
    await _sign_ups(client, auth(demo), "f", 2)
    real = await _checkpoint(client, auth, demo)
    n = real["tree_size"]
    caplog.set_level(logging.ERROR, logger="consent_ledger.proof")
    await _fake_row(runtime_db, demo, 1_000_000, real)  # another checkpoint's genuine JWS
    await _fake_row(runtime_db, demo, n - 1, real, jws="e30.e30.AAAA")  # garbage, below the real one
    assert (await client.get("/v1/audit/checkpoints/latest", headers=headers)).json() == real
    assert (await client.get("/v1/audit/checkpoints/latest", headers=headers)).json() == real
    for size in (1_000_000, n - 1):
        assert (await client.get(f"/v1/audit/checkpoints/{size}", headers=headers)).status_code == 404
    assert (await client.get("/v1/audit/checkpoints", headers=headers)).json() == {"items": [real], "next_after": None}
    page = (await client.get("/v1/audit/checkpoints", params={"limit": 1}, headers=headers)).json()
    assert page == {"items": [real], "next_after": n}
    # Proofs are against the real one; the fake sizes are no checkpoints.
    event_id = await db.fetchval("SELECT event_id FROM ledger_log WHERE tenant_id = $1 AND idx = 0", demo)
    body = (await client.get("/v1/audit/proofs/inclusion", params={"event_id": str(event_id)}, headers=headers)).json()
    assert body["checkpoint"] == real
    response = await client.get("/v1/audit/proofs/inclusion", params={"event_id": str(event_id), "tree_size": 1_000_000},
                                headers=headers)
    assert response.status_code == 422
    response = await client.get("/v1/audit/proofs/consistency", params={"first": n, "second": 1_000_000},
                                headers=headers)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "query.second"
    # Each bad row logged once (it was met many times above).
    for size in (1_000_000, n - 1):
        assert len([r for r in caplog.records if r.levelno == logging.ERROR and
                    f"tree_size {size}) is not a checkpoint this service signed" in r.getMessage()]) == 1

    # Checkpointing goes on, by the API and by the worker (the fake row does not make the tenant look done).
    await _sign_ups(client, auth(demo), "g", 1)
    second = await _checkpoint(client, auth, demo)
    assert second["tree_size"] > n
    assert (await client.get("/v1/audit/checkpoints/latest", headers=headers)).json() == second
    await _sign_ups(client, auth(demo), "h", 1)
    async with runtime_db.transaction():  # placed without a checkpoint: only the log says it is due
        await runtime_db.fetch("SELECT idx FROM ledger_log_take($1, 1000)", demo)
    checkpointer = Checkpointer(dataclasses.replace(app.state.settings, checkpoint_dir=None), app.state.proof)
    third = [c for c in await checkpointer.round() if c["tenant"] == demo]
    assert len(third) == 1 and third[0]["tree_size"] > second["tree_size"]


async def test_a_fake_row_at_the_size_to_be_signed_is_a_409_naming_it(client, auth, demo, db, runtime_db):
    await _sign_ups(client, auth(demo), "o", 1)
    real = await _checkpoint(client, auth, demo)
    await _sign_ups(client, auth(demo), "o2", 1)
    size = await leaf_count(db, demo)  # the size the next checkpoint signs: events and duty records
    await _fake_row(runtime_db, demo, size, real)
    response = await client.post("/v1/audit/checkpoints", headers=auth(demo, "audit:read"))
    assert response.status_code == 409, response.text
    assert _type(response) == "checkpoint-forged" and response.json()["tree_size"] == size
    assert f"tree size {size}" in response.json()["detail"]
    assert await db.fetchval("SELECT jws FROM ledger_checkpoints WHERE tenant_id = $1 AND tree_size = $2",
                             demo, size) == real["jws"]  # untouched, and nothing else signed
    await _sign_ups(client, auth(demo), "o3", 1)
    assert (await _checkpoint(client, auth, demo))["tree_size"] > size


# -- 5. a held log lock -----------------------------------------------------------------------------


async def test_a_held_log_lock_skips_that_tenant_for_the_round_and_no_other(app, client, auth, demo, db, runtime_db,
                                                                           new_tenant, caplog):
    from app.demo.loader import load_catalog
    from app.demo.tenants import SMALLTICKET

    other = await new_tenant()
    async with app.state.sessions() as session, session.begin():
        await load_catalog(session, {**SMALLTICKET, "tenant": {**SMALLTICKET["tenant"], "id": other}})
    await _sign_ups(client, auth(demo), "l", 1)
    await _sign_ups(client, auth(other), "l", 1)
    await runtime_db.execute("SELECT pg_advisory_lock(hashtextextended('consent-ledger log ' || $1, 0))", demo)
    settings = dataclasses.replace(app.state.settings, checkpoint_dir=None, db_lock_timeout_seconds=0.3)
    checkpointer = Checkpointer(settings, app.state.proof)
    caplog.set_level(logging.WARNING, logger="consent_ledger.proof")
    try:
        started = time.monotonic()
        made = {c["tenant"] for c in await checkpointer.round()}
        assert time.monotonic() - started < 20
        assert other in made and demo not in made
        assert any(r.levelno == logging.WARNING and repr(demo) in r.getMessage() and "skipped this round" in r.getMessage()
                   for r in caplog.records)
        assert demo not in checkpointer._retry_at  # skipped, not failed: no back-off
    finally:
        await runtime_db.execute("SELECT pg_advisory_unlock(hashtextextended('consent-ledger log ' || $1, 0))", demo)
    assert demo in {c["tenant"] for c in await checkpointer.round()}


async def test_the_apis_checkpoint_runs_with_a_lock_timeout(app):
    """POST /v1/audit/checkpoints runs on the ledger pool, whose connections carry lock_timeout."""
    async with app.state.pool.acquire() as conn:
        assert app.state.settings.db_lock_timeout_seconds > 0
        assert await conn.fetchval("SELECT current_setting('lock_timeout')::interval = make_interval(secs => $1)",
                                   float(app.state.settings.db_lock_timeout_seconds))
