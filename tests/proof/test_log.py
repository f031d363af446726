"""The tenant's Merkle log in the database (app/proof/log.py): placing queued events, the stored
subtrees, the one-query node fetch, concurrent extenders, and checkpoint signing's own checks."""

from __future__ import annotations

import asyncio
import logging

import pytest

from app.proof import checkpoint_rows, keys, log, merkle
from tests.helpers import leaf_count, leaf_hashes, sign_up


async def _sign_ups(client, headers, prefix: str, n: int) -> None:
    for i in range(n):
        response = await sign_up(client, headers, f"{prefix}-{i}", granted={"marketing-sms"} if i % 2 else set())
        assert response.status_code == 201, response.text


async def _leaves(db, tenant: str) -> list[bytes]:
    rows = await db.fetch("SELECT idx, event_hash FROM ledger_log WHERE tenant_id = $1 ORDER BY idx", tenant)
    assert [r["idx"] for r in rows] == list(range(len(rows)))  # indexes 0..n-1, no gap
    return [merkle.leaf_hash(bytes.fromhex(r["event_hash"])) for r in rows]


async def _assert_nodes_complete(db, tenant: str, leaves: list[bytes]) -> None:
    """Exactly the complete aligned subtrees of the leaves are stored, each with its MTH."""
    stored = {(r["level"], r["idx"]): r["hash"] for r in await db.fetch(
        "SELECT level, idx, hash FROM ledger_log_nodes WHERE tenant_id = $1", tenant)}
    expected = {}
    level = 1
    while (1 << level) <= len(leaves):
        width = 1 << level
        for j in range(len(leaves) // width):
            expected[level, j] = merkle.root(leaves[j * width:(j + 1) * width])
        level += 1
    assert stored == expected


async def _extend(app, tenant: str, **kwargs) -> int:
    async with app.state.pool.acquire() as conn, conn.transaction():
        return await log.extend(conn, tenant, **kwargs)


async def test_extend_places_every_event_once_in_queue_order_and_stores_its_subtrees(app, client, auth, demo, db):
    await _sign_ups(client, auth(demo), "x", 5)
    # The leaves are the events and the duty records (docs/duties.md): the marketing grants owe some.
    assert await db.fetchval("SELECT count(*) FROM duty_records WHERE tenant_id = $1", demo) > 0
    events = await leaf_count(db, demo)
    queued = [r["event_id"] for r in await db.fetch(
        "SELECT event_id FROM ledger_log_queue WHERE tenant_id = $1 ORDER BY position", demo)]
    assert len(queued) == events > 20
    assert len(set(queued)) == len(queued)
    # Small batches: the loop, the frontier read back between batches (leaves and nodes) and its carry.
    assert await _extend(app, demo, limit=7) == events
    logged = [r["event_id"] for r in await db.fetch(
        "SELECT event_id FROM ledger_log WHERE tenant_id = $1 ORDER BY idx", demo)]
    assert logged == queued
    assert await db.fetchval("SELECT count(*) FROM ledger_log_queue WHERE tenant_id = $1", demo) == 0
    leaves = await _leaves(db, demo)
    hashes = await leaf_hashes(db, demo)
    assert set(logged) == set(hashes)  # every event and duty record once
    assert leaves == [merkle.leaf_hash(bytes.fromhex(hashes[e])) for e in logged]
    await _assert_nodes_complete(db, demo, leaves)
    # Nothing queued: the size, nothing written.
    assert await _extend(app, demo) == events
    await _sign_ups(client, auth(demo), "y", 2)
    size = await _extend(app, demo, limit=3)
    assert size == await leaf_count(db, demo)
    await _assert_nodes_complete(db, demo, await _leaves(db, demo))


async def test_extend_of_an_empty_log_is_zero(app, tenant):
    assert await _extend(app, tenant) == 0


async def test_concurrent_extenders_and_writers_leave_one_consistent_log(app, client, auth, demo, db):
    """The tenant's log lock (ledger_log_take) serialises extenders to their commits: each reads the
    frontier the previous one stored, so the nodes are those of the one log there is."""
    headers = auth(demo)

    async def writer(n: int) -> None:
        await _sign_ups(client, headers, f"w{n}", 3)

    async def extender() -> None:
        for _ in range(6):
            await _extend(app, demo, limit=5)
            await asyncio.sleep(0)

    await asyncio.gather(writer(1), writer(2), extender(), extender(), extender())
    size = await _extend(app, demo)
    assert size == await leaf_count(db, demo)  # events and duty records, each once
    await _assert_nodes_complete(db, demo, await _leaves(db, demo))


async def test_fetch_nodes_reads_leaves_and_inner_nodes_in_one_query(app, client, auth, demo, db):
    await _sign_ups(client, auth(demo), "f", 3)
    size = await _extend(app, demo)
    leaves = await _leaves(db, demo)
    wanted = [(0, 0), (0, size - 1), (1, 0), (2, 1), (3, 0), (0, 5), (1, 0)]

    class Counting:
        def __init__(self, conn):
            self.conn, self.calls = conn, 0

        async def fetch(self, *args):
            self.calls += 1
            return await self.conn.fetch(*args)

    async with app.state.pool.acquire() as conn:
        counting = Counting(conn)
        found = await log.fetch_nodes(counting, demo, wanted)
        assert counting.calls == 1
        assert await log.fetch_nodes(counting, demo, []) == {} and counting.calls == 1
        assert await log.fetch_nodes(conn, demo, [(1, size)]) == {}  # not complete yet: not there
    assert found == {(0, 0): leaves[0], (0, size - 1): leaves[-1], (0, 5): leaves[5],
                     (1, 0): merkle.root(leaves[0:2]), (2, 1): merkle.root(leaves[4:8]), (3, 0): merkle.root(leaves[:8])}
    with pytest.raises(log.LogInconsistent, match=r"lacks its node \(level 1, index 999\)"):
        log.getter(demo, found)(1, 999)


async def test_checkpoint_signs_the_root_of_the_log_and_writes_its_webhook_in_the_same_transaction(app, client, auth,
                                                                                                      demo, db):
    await _sign_ups(client, auth(demo), "c", 2)
    proof = app.state.proof
    async with app.state.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        made = await log.checkpoint(conn, demo, proof)
        await tx.rollback()  # a rolled-back checkpoint leaves nothing: no row, no place in the log
    assert made is not None
    assert await db.fetchval("SELECT count(*) FROM ledger_checkpoints WHERE tenant_id = $1", demo) == 0
    assert await db.fetchval("SELECT count(*) FROM ledger_log WHERE tenant_id = $1", demo) == 0

    made = await log.make_checkpoint(app.state.pool, demo, proof)
    leaves = await _leaves(db, demo)
    assert made["tree_size"] == len(leaves) and made["root_hash"] == merkle.root(leaves).hex()
    payload = keys.verify(made["jws"], proof.jwks(), checkpoint_rows.CHECKPOINT_TYP)
    assert payload == {k: made[k] for k in ("tenant", "tree_size", "root_hash", "issued_at")}
    assert made["key_id"] == proof.signer.kid
    assert await checkpoint_rows.latest(app.state.pool, demo, proof) == made == await checkpoint_rows.get(app.state.pool, demo, made["tree_size"],
                                                                               proof)
    assert await checkpoint_rows.latest(app.state.pool, demo) == made == await checkpoint_rows.get(app.state.pool, demo, made["tree_size"])
    # Nothing new: nothing signed, with or without force.
    assert await log.make_checkpoint(app.state.pool, demo, proof) is None
    assert await log.make_checkpoint(app.state.pool, demo, proof, force=True) is None


async def test_a_checkpoint_row_that_is_not_what_was_signed_is_skipped_but_its_signature_still_binds(
        app, client, auth, demo, db, caplog):
    """A row whose columns no longer say what its JWS signs (a DBA edited its root to match a
    rewritten log) is neither served nor used as the previous checkpoint, and is logged at ERROR once;
    but what its JWS does sign still binds: a rewritten log is refused against it."""
    await _sign_ups(client, auth(demo), "r", 2)
    proof = app.state.proof
    first = await log.make_checkpoint(app.state.pool, demo, proof)
    n = first["tree_size"]
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        await db.execute("UPDATE ledger_checkpoints SET root_hash = $3 WHERE tenant_id = $1 AND tree_size = $2",
                         demo, n, "00" * 32)
    caplog.set_level(logging.ERROR, logger="consent_ledger.proof")
    assert await checkpoint_rows.latest(app.state.pool, demo, proof) is None
    assert await checkpoint_rows.get(app.state.pool, demo, n, proof) is None
    assert await checkpoint_rows.list_after(app.state.pool, demo, 0, 10, proof) == []
    assert await checkpoint_rows.latest(app.state.pool, demo) is not None  # without keys: as stored (the bundle checks it)
    reported = [r for r in caplog.records if f"tree_size {n}) is not a checkpoint this service signed" in r.getMessage()]
    assert len(reported) == 1 and reported[0].levelno == logging.ERROR  # once per row, however often it is met

    # The DBA rewrites the log (leaf 0 becomes another hash, every node recomputed): refused, from
    # the signature in the edited row.
    leaves = await _leaves(db, demo)
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        await db.execute("UPDATE ledger_log SET event_hash = $2 WHERE tenant_id = $1 AND idx = 0", demo, "ab" * 32)
        await db.execute("DELETE FROM ledger_log_nodes WHERE tenant_id = $1", demo)
        leaves[0] = merkle.leaf_hash(bytes.fromhex("ab" * 32))
        await db.executemany("INSERT INTO ledger_log_nodes (tenant_id, level, idx, hash) VALUES ($1, $2, $3, $4)",
                             [(demo, lv, ix, h) for lv, ix, h in merkle.new_nodes(0, leaves, lambda lv, ix: b"")])
    await _sign_ups(client, auth(demo), "s", 1)
    with pytest.raises(log.LogInconsistent, match=f"no longer extends checkpoint {n} \\(the signature in a "
                                                  "ledger_checkpoints row that does not match it\\)"):
        await log.make_checkpoint(app.state.pool, demo, proof)
    assert await db.fetchval("SELECT max(tree_size) FROM ledger_checkpoints WHERE tenant_id = $1", demo) == n
