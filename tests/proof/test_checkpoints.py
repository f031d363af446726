"""Signed checkpoints and proofs through the API, checked the way an outside auditor would: the JWS
with the third-party joserfc and the published JWKS, the proofs with the RFC 9162 verifiers against
the root a verified checkpoint signs. Then a rogue DBA rewrites history, and the checkpoints already
handed out (the database's, a file in CHECKPOINT_DIR, an auditor's copy) give it away."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid

import pytest
from joserfc import jws
from joserfc.jwk import KeySet

from app.proof import checkpoint_files, log, merkle
from app.proof.checkpointer import Checkpointer, run_checkpointer
from app.webhooks.dispatcher import Worker
from tests.helpers import leaf_count, leaf_hashes, sign_up
from tests.webhooks.receiver import Receiver

# joserfc warns that RFC 9864 deprecates the polymorphic "EdDSA" name (see tests/proof/test_keys.py).
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")

JWKS = "/.well-known/consent-ledger/jwks.json"
TYP = "consent-ledger-checkpoint+jwt"


async def _sign_ups(client, headers, prefix: str, n: int) -> None:
    for i in range(n):
        response = await sign_up(client, headers, f"{prefix}-{i}", granted={"marketing", "marketing-sms"})
        assert response.status_code == 201, response.text


async def _checkpoint_now(client, headers, expected: int = 201) -> dict:
    response = await client.post("/v1/audit/checkpoints", headers=headers)
    assert response.status_code == expected, response.text
    return response.json()


async def _verified(client, checkpoint: dict) -> dict:
    """The checkpoint's payload as an auditor reads it: joserfc, with the keys from the public route."""
    response = await client.get(JWKS)  # no token
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=300"
    obj = jws.deserialize_compact(checkpoint["jws"], KeySet.import_key_set(response.json()), algorithms=["EdDSA"])
    assert obj.headers() == {"alg": "EdDSA", "kid": checkpoint["key_id"], "typ": TYP}
    payload = json.loads(obj.payload)
    assert payload == {k: checkpoint[k] for k in ("tenant", "tree_size", "root_hash", "issued_at")}
    return payload


async def _log(db, tenant: str) -> list[tuple[uuid.UUID, str]]:
    return [(r["event_id"], r["event_hash"]) for r in await db.fetch(
        "SELECT event_id, event_hash FROM ledger_log WHERE tenant_id = $1 ORDER BY idx", tenant)]


def _leaf(event_hash: str) -> bytes:
    return merkle.leaf_hash(bytes.fromhex(event_hash))


async def test_checkpoint_verifies_with_joserfc_and_signs_the_root_of_the_whole_log(client, auth, demo, db,
                                                                                    new_tenant):
    headers = auth(demo, "audit:read")
    await _sign_ups(client, auth(demo), "m", 3)
    made = await _checkpoint_now(client, headers)
    payload = await _verified(client, made)
    entries = await _log(db, demo)
    assert payload["tenant"] == demo
    # The whole log: every event and every duty record (both are leaves: docs/duties.md), each once.
    assert await db.fetchval("SELECT count(*) FROM duty_records WHERE tenant_id = $1", demo) > 0
    assert payload["tree_size"] == len(entries) == await leaf_count(db, demo)
    assert dict(entries) == await leaf_hashes(db, demo)
    assert payload["root_hash"] == merkle.root([_leaf(h) for _, h in entries]).hex()
    # Nothing new: the latest again, 200; it is what the read routes give too.
    assert await _checkpoint_now(client, headers, expected=200) == made
    assert (await client.get("/v1/audit/checkpoints/latest", headers=headers)).json() == made
    assert (await client.get(f"/v1/audit/checkpoints/{made['tree_size']}", headers=headers)).json() == made
    assert (await client.get(f"/v1/audit/checkpoints/{made['tree_size'] + 1}", headers=headers)).status_code == 404
    # A tenant with an empty log: nothing to sign.
    other = auth(await new_tenant(), "audit:read")
    response = await client.post("/v1/audit/checkpoints", headers=other)
    assert response.status_code == 409 and "empty" in response.json()["detail"]
    assert (await client.get("/v1/audit/checkpoints/latest", headers=other)).status_code == 404
    # audit:read is the scope.
    assert (await client.post("/v1/audit/checkpoints", headers=auth(demo, "consents:read"))).status_code == 403


async def test_inclusion_proof_of_every_event_verifies_against_the_signed_root(client, auth, demo, db):
    headers = auth(demo, "audit:read")
    await _sign_ups(client, auth(demo), "i", 2)
    await client.post("/v1/subjects/i-0/consents/marketing-sms/withdraw", headers=auth(demo))
    payload = await _verified(client, await _checkpoint_now(client, headers))
    root = bytes.fromhex(payload["root_hash"])
    entries = await _log(db, demo)
    for index, (event_id, event_hash) in enumerate(entries):
        response = await client.get("/v1/audit/proofs/inclusion", params={"event_id": str(event_id)}, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["leaf_index"], body["tree_size"], body["event_hash"]) == (index, payload["tree_size"], event_hash)
        assert body["leaf_hash"] == _leaf(event_hash).hex()
        path = [bytes.fromhex(h) for h in body["audit_path"]]
        assert merkle.verify_inclusion(_leaf(event_hash), index, payload["tree_size"], path, root)
        assert not merkle.verify_inclusion(_leaf(entries[index - 1][1]), index, payload["tree_size"], path, root)
        assert body["checkpoint"]["jws"] == (await client.get("/v1/audit/checkpoints/latest", headers=headers)).json()["jws"]
    # The event hash is the event's own, as its history prints it.
    history = (await client.get("/v1/subjects/i-0/consents/history", headers=auth(demo))).json()["items"]
    assert {e["hash"] for e in history} <= {h for _, h in entries}

    # Recorded after the checkpoint: pending (404, says so); unknown: 404; no such checkpoint: 422.
    await _sign_ups(client, auth(demo), "j", 1)
    newest = await db.fetchval("SELECT id FROM consent_events WHERE tenant_id = $1 ORDER BY recorded_at DESC LIMIT 1",
                               demo)
    response = await client.get("/v1/audit/proofs/inclusion", params={"event_id": str(newest)}, headers=headers)
    assert response.status_code == 404 and response.json()["pending"] is True
    assert "not in a checkpoint yet" in response.json()["detail"]
    response = await client.get("/v1/audit/proofs/inclusion", params={"event_id": str(uuid.uuid4())}, headers=headers)
    assert response.status_code == 404 and "pending" not in response.json()
    response = await client.get("/v1/audit/proofs/inclusion", headers=headers,
                                params={"event_id": str(entries[0][0]), "tree_size": payload["tree_size"] + 1})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "query.tree_size"


async def test_consistency_between_two_checkpoints_verifies_and_older_proofs_still_do(client, auth, demo, db):
    headers = auth(demo, "audit:read")
    await _sign_ups(client, auth(demo), "a", 1)
    first = await _verified(client, await _checkpoint_now(client, headers))
    await _sign_ups(client, auth(demo), "b", 2)
    second = await _verified(client, await _checkpoint_now(client, headers))
    assert second["tree_size"] > first["tree_size"]
    response = await client.get("/v1/audit/proofs/consistency", headers=headers,
                                params={"first": first["tree_size"], "second": second["tree_size"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["first_checkpoint"]["root_hash"] == first["root_hash"]
    assert body["second_checkpoint"]["root_hash"] == second["root_hash"]
    proof = [bytes.fromhex(h) for h in body["proof"]]
    roots = bytes.fromhex(first["root_hash"]), bytes.fromhex(second["root_hash"])
    assert merkle.verify_consistency(first["tree_size"], second["tree_size"], *roots, proof)
    assert not merkle.verify_consistency(first["tree_size"], second["tree_size"], roots[1], roots[1], proof)
    # An event of the first checkpoint, proved against it (not the latest).
    event_id, event_hash = (await _log(db, demo))[3]
    response = await client.get("/v1/audit/proofs/inclusion", headers=headers,
                                params={"event_id": str(event_id), "tree_size": first["tree_size"]})
    body = response.json()
    assert body["tree_size"] == first["tree_size"] and body["checkpoint"]["root_hash"] == first["root_hash"]
    assert merkle.verify_inclusion(_leaf(event_hash), 3, first["tree_size"],
                                   [bytes.fromhex(h) for h in body["audit_path"]], roots[0])
    # Listing, keyset by tree size.
    page = (await client.get("/v1/audit/checkpoints", params={"limit": 1}, headers=headers)).json()
    assert [c["tree_size"] for c in page["items"]] == [first["tree_size"]] and page["next_after"] == first["tree_size"]
    page = (await client.get("/v1/audit/checkpoints", params={"after": page["next_after"]}, headers=headers)).json()
    assert [c["tree_size"] for c in page["items"]] == [second["tree_size"]] and page["next_after"] is None
    # Sizes without a checkpoint, or in the wrong order: 422.
    for params in ({"first": second["tree_size"], "second": first["tree_size"]},
                   {"first": first["tree_size"], "second": second["tree_size"] + 5}):
        assert (await client.get("/v1/audit/proofs/consistency", params=params, headers=headers)).status_code == 422


async def _rewrite_history_without(db, tenant: str, event_id: uuid.UUID) -> None:
    """A rogue DBA: triggers off, the event gone with everything pointing at it (head, state), and the
    tenant's log and stored subtrees rebuilt from scratch, every hash recomputed, so that the
    database is consistent with itself."""
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        gone = await db.fetchrow("SELECT * FROM consent_events WHERE id = $1", event_id)
        before = await db.fetchrow("SELECT * FROM consent_events WHERE subject_id = $1 AND seq = $2",
                                   gone["subject_id"], gone["seq"] - 1)
        earlier = await db.fetchrow("SELECT * FROM consent_events WHERE subject_id = $1 AND purpose_id = $2 "
                                    "AND seq < $3 ORDER BY seq DESC LIMIT 1", gone["subject_id"], gone["purpose_id"],
                                    gone["seq"])
        await db.execute("DELETE FROM consent_events WHERE id = $1", event_id)
        await db.execute("UPDATE subjects SET last_seq = $2, last_hash = $3, last_recorded_at = $4 WHERE id = $1",
                         gone["subject_id"], before["seq"], before["hash"], before["recorded_at"])
        await db.execute("UPDATE consent_states SET status = $3, version = $4, since = $5, last_event_id = $6 "
                         "WHERE subject_id = $1 AND purpose_id = $2", gone["subject_id"], gone["purpose_id"],
                         earlier["status"], earlier["version"], earlier["recorded_at"], earlier["id"])
        kept = await db.fetch("SELECT event_id, subject_id, event_hash FROM ledger_log WHERE tenant_id = $1 "
                              "AND event_id <> $2 ORDER BY idx", tenant, event_id)
        await db.execute("DELETE FROM ledger_log WHERE tenant_id = $1", tenant)
        await db.execute("DELETE FROM ledger_log_nodes WHERE tenant_id = $1", tenant)
        await db.executemany("INSERT INTO ledger_log (tenant_id, idx, event_id, subject_id, event_hash) "
                             "VALUES ($1, $2, $3, $4, $5)",
                             [(tenant, i, r["event_id"], r["subject_id"], r["event_hash"]) for i, r in enumerate(kept)])
        nodes = merkle.new_nodes(0, [_leaf(r["event_hash"]) for r in kept], lambda level, idx: b"")
        await db.executemany("INSERT INTO ledger_log_nodes (tenant_id, level, idx, hash) VALUES ($1, $2, $3, $4)",
                             [(tenant, level, idx, h) for level, idx, h in nodes])


async def test_a_rewritten_history_is_refused_a_checkpoint_and_fails_the_saved_one(app, client, auth, demo, db,
                                                                                    tmp_path, caplog):
    headers = auth(demo, "audit:read")
    await _sign_ups(client, auth(demo), "v", 2)
    response = await client.post("/v1/subjects/v-0/consents/marketing-sms/withdraw", headers=auth(demo))
    withdrawal = uuid.UUID(response.json()["results"][0]["event"]["id"])
    await _sign_ups(client, auth(demo), "w", 1)  # the withdrawal is in the middle of the log
    saved = await _checkpoint_now(client, headers)  # what an auditor (or a webhook receiver) keeps
    saved_payload = await _verified(client, saved)
    checkpoint_files.write_file(tmp_path, saved)  # and what the worker wrote to CHECKPOINT_DIR
    n, saved_root = saved_payload["tree_size"], bytes.fromhex(saved_payload["root_hash"])
    assert any(e == withdrawal for e, _ in await _log(db, demo))

    await _rewrite_history_without(db, demo, withdrawal)
    await _sign_ups(client, auth(demo), "x", 1)  # the service carries on: new events to sign

    # (i) the next checkpoint refuses to sign: the stored log no longer extends checkpoint n.
    caplog.set_level(logging.ERROR, logger="consent_ledger.proof")
    response = await client.post("/v1/audit/checkpoints", headers=headers)
    assert response.status_code == 409, response.text
    assert response.json()["type"].endswith(":log-inconsistent")
    assert f"no longer extends checkpoint {n} (database): history was rewritten" in response.json()["detail"]
    assert any(r.levelno == logging.ERROR and r.getMessage().startswith(
        f"the log no longer extends checkpoint {n}: history was rewritten") for r in caplog.records)
    assert await db.fetchval("SELECT max(tree_size) FROM ledger_checkpoints WHERE tenant_id = $1", demo) == n
    assert await db.fetchval("SELECT count(*) FROM webhook_messages WHERE tenant_id = $1 AND type = "
                             "'ledger.checkpoint'", demo) == 0  # no endpoint asked; and nothing new was signed
    # The worker's round refuses too (logged, backed off, never raised).
    checkpointer = Checkpointer(dataclasses.replace(app.state.settings, checkpoint_dir=None), app.state.proof)
    assert all(c["tenant"] != demo for c in await checkpointer.round())

    # (ii) the saved checkpoint against what the database now holds, as the service goes on extending
    # it: no proof connects them. Not even an event the DBA did not touch proves to be in the saved
    # tree any more (the server still holds the checkpoint row and hands out its path).
    async with app.state.pool.acquire() as conn, conn.transaction():
        size = await log.extend(conn, demo)
    assert size >= n
    event_id, event_hash = (await _log(db, demo))[0]
    response = await client.get("/v1/audit/proofs/inclusion", params={"event_id": str(event_id), "tree_size": n},
                                headers=headers)
    assert response.status_code == 200, response.text
    path = [bytes.fromhex(h) for h in response.json()["audit_path"]]
    assert not merkle.verify_inclusion(_leaf(event_hash), 0, n, path, saved_root)
    nodes = await log.fetch_nodes(db, demo, set(merkle.root_nodes(size)) | set(merkle.consistency_nodes(n, size)))
    get = log.getter(demo, nodes)
    current_root = merkle.root_from_nodes(size, get)
    assert not merkle.verify_consistency(n, size, saved_root, current_root, merkle.consistency_proof(n, size, get))

    # The DBA deletes the checkpoints as well: the database alone could not tell any more, but the
    # file in CHECKPOINT_DIR, which it cannot touch, still does.
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        await db.execute("DELETE FROM ledger_checkpoints WHERE tenant_id = $1", demo)
    with pytest.raises(log.LogInconsistent, match=f"no longer extends checkpoint {n} \\(.*{n:012d}.json\\)"):
        await log.make_checkpoint(app.state.pool, demo, app.state.proof, checkpoint_dir=tmp_path)
    assert await db.fetchval("SELECT count(*) FROM ledger_checkpoints WHERE tenant_id = $1", demo) == 0

    # Without the file, the database alone would sign again; an auditor holding the saved checkpoint
    # then finds the new one inconsistent with it.
    made = await log.make_checkpoint(app.state.pool, demo, app.state.proof)
    new_root, m = bytes.fromhex((await _verified(client, made))["root_hash"]), made["tree_size"]
    get = log.getter(demo, await log.fetch_nodes(db, demo, merkle.consistency_nodes(n, m)))
    assert not merkle.verify_consistency(n, m, saved_root, new_root, merkle.consistency_proof(n, m, get))


async def test_the_worker_checkpoints_by_itself_and_writes_the_file(app, client, auth, demo, tmp_path):
    await _sign_ups(client, auth(demo), "k", 1)
    settings = dataclasses.replace(app.state.settings, checkpoint_dir=tmp_path, checkpoint_interval_seconds=0.1)
    made = [c for c in await Checkpointer(settings, app.state.proof).round() if c["tenant"] == demo]
    assert len(made) == 1
    path = tmp_path / demo / f"{made[0]['tree_size']:012d}.json"
    assert json.loads(path.read_text()) == made[0]
    assert [p.name for p in (tmp_path / demo).iterdir()] == [path.name]  # no temporary file left
    await _verified(client, made[0])

    # The loop, as the worker runs it: new events get their checkpoint within an interval or so.
    stop = asyncio.Event()
    task = asyncio.create_task(run_checkpointer(settings, stop, app.state.proof))
    try:
        await _sign_ups(client, auth(demo), "l", 1)
        for _ in range(100):
            latest = (await client.get("/v1/audit/checkpoints/latest", headers=auth(demo, "audit:read"))).json()
            if latest["tree_size"] > made[0]["tree_size"]:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the checkpointer made no new checkpoint in 10 s")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert json.loads((tmp_path / demo / f"{latest['tree_size']:012d}.json").read_text()) == latest


async def test_endpoints_that_list_ledger_checkpoint_receive_it_signed(app, client, auth, demo, db):
    admin = auth(demo, "webhooks:admin")
    receivers = [await Receiver().start(), await Receiver().start()]
    endpoints = []
    try:
        for receiver, event_types in zip(receivers, (["ledger.checkpoint"], [])):
            response = await client.post("/v1/webhook-endpoints", headers=admin,
                                         json={"url": receiver.url, "event_types": event_types})
            assert response.status_code == 201, response.text
            endpoints.append(response.json())
            receiver.secrets.append(endpoints[-1]["secret"])
        await _sign_ups(client, auth(demo), "h", 1)
        made = await _checkpoint_now(client, auth(demo, "audit:read"))
        rows = await db.fetch("SELECT m.subject_ref, m.event_id, d.endpoint_id FROM webhook_messages m "
                              "JOIN webhook_deliveries d ON d.message_id = m.id "
                              "WHERE m.tenant_id = $1 AND m.type = 'ledger.checkpoint'", demo)
        assert [(r["subject_ref"], r["event_id"], str(r["endpoint_id"])) for r in rows] == [
            (None, None, endpoints[0]["id"])]  # an empty filter means every *consent* event type
        stop = asyncio.Event()
        worker = asyncio.create_task(Worker(app.state.settings, name="checkpoint-test").run(stop))
        try:
            received = await receivers[0].wait_for(1)
        finally:
            stop.set()
            await asyncio.wait_for(worker, 10)
        body = received[0].json
        assert body["type"] == "ledger.checkpoint"
        assert body["data"] == made
        await _verified(client, body["data"])
        assert all(r.json["type"] != "ledger.checkpoint" for r in receivers[1].received)
    finally:
        await db.execute("UPDATE webhook_endpoints SET enabled = false WHERE tenant_id = $1", demo)
        for receiver in receivers:
            await receiver.stop()


async def test_another_tenants_token_gets_no_checkpoint_nor_proof(client, auth, demo, db, new_tenant):
    await _sign_ups(client, auth(demo), "o", 1)
    made = await _checkpoint_now(client, auth(demo, "audit:read"))
    event_id = (await _log(db, demo))[0][0]
    intruder = auth(await new_tenant(), "audit:read")
    assert (await client.get(f"/v1/audit/checkpoints/{made['tree_size']}", headers=intruder)).status_code == 404
    assert (await client.get("/v1/audit/checkpoints/latest", headers=intruder)).status_code == 404
    assert (await client.get("/v1/audit/checkpoints", headers=intruder)).json() == {"items": [], "next_after": None}
    response = await client.get("/v1/audit/proofs/inclusion", params={"event_id": str(event_id)}, headers=intruder)
    assert response.status_code == 404 and "pending" not in response.json()
    # Naming the victim's tree size: the intruder's tenant has no checkpoint of it.
    response = await client.get("/v1/audit/proofs/inclusion", headers=intruder,
                                params={"event_id": str(event_id), "tree_size": made["tree_size"]})
    assert response.status_code == 422
    response = await client.get("/v1/audit/proofs/consistency", headers=intruder,
                                params={"first": made["tree_size"], "second": made["tree_size"]})
    assert response.status_code == 422
