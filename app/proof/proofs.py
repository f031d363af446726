"""Inclusion and consistency proofs (RFC 9162) against checkpoints the service signed."""

from __future__ import annotations

from typing import Any

import asyncpg

from app.core.errors import InvalidRequest, NotFound
from app.proof import merkle
from app.proof.context import Proof
from app.proof.checkpoint_rows import PAIR, Judge, as_dict, connection, newest_valid
from app.proof.log import fetch_nodes, getter

# The event's place and the checkpoint it is proved against, in one round trip; {which} picks the
# latest checkpoint or the one at $3.
LEAF = """
SELECT l.idx, l.event_hash, c.tenant_id, c.tree_size, c.root_hash, c.issued_at, c.key_id, c.jws,
       l.idx IS NULL AND EXISTS (SELECT 1 FROM ledger_log_queue q WHERE q.event_id = $2 AND q.tenant_id = $1) AS queued
FROM (SELECT 1) AS one
LEFT JOIN ledger_log l ON l.tenant_id = $1 AND l.event_id = $2
LEFT JOIN LATERAL (SELECT * FROM ledger_checkpoints c WHERE c.tenant_id = $1 {which}) c ON true
"""
LEAF_LATEST = LEAF.format(which="ORDER BY c.tree_size DESC LIMIT 1")
LEAF_AT = LEAF.format(which="AND c.tree_size = $3")

async def inclusion(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, event_id: Any,
                    tree_size: int | None = None, *, proof: Proof | None = None) -> dict[str, Any]:
    """The RFC 9162 audit path of an event in a checkpointed tree (the latest by default). With
    `proof`, only against a checkpoint row that verifies (pass it: without, the row is as stored)."""
    async with connection(conn) as c:
        return await _inclusion(c, tenant, event_id, tree_size, proof)


async def _inclusion(conn: asyncpg.Connection, tenant: str, event_id: Any, tree_size: int | None,
                     proof: Proof | None) -> dict[str, Any]:
    if tree_size is None:
        row = await conn.fetchrow(LEAF_LATEST, tenant, event_id)
    else:
        row = await conn.fetchrow(LEAF_AT, tenant, event_id, tree_size)
    anchor: asyncpg.Record | None = row if row["tree_size"] is not None else None
    if anchor is not None and proof is not None:
        judge = Judge(proof)
        if not judge.valid(anchor):
            anchor = None if tree_size is not None else (await newest_valid(conn, tenant, judge, row["tree_size"]))[0]
    if tree_size is not None and anchor is None:
        raise InvalidRequest(f"there is no checkpoint of tree size {tree_size}",
                             errors=[{"field": "query.tree_size", "reason": "no checkpoint of this size"}])
    if row["idx"] is None and not row["queued"]:
        raise NotFound(f"no event {event_id} in this tenant's log")
    if row["idx"] is None or anchor is None or row["idx"] >= anchor["tree_size"]:
        if tree_size is not None and row["idx"] is not None:
            raise NotFound(f"event {event_id} (leaf {row['idx']}) is not in the tree of size {tree_size}; "
                           "ask for a later checkpoint", extra={"pending": False, "leaf_index": row["idx"]})
        raise NotFound(f"event {event_id} is not in a checkpoint yet: it enters the next one",
                       extra={"pending": True, "leaf_index": row["idx"]})
    idx, size = row["idx"], anchor["tree_size"]
    get = getter(tenant, await fetch_nodes(conn, tenant, merkle.inclusion_nodes(idx, size)))
    return {"tenant": tenant, "event_id": str(event_id), "leaf_index": idx, "tree_size": size,
            "event_hash": row["event_hash"], "leaf_hash": merkle.leaf_hash(bytes.fromhex(row["event_hash"])).hex(),
            "audit_path": [h.hex() for h in merkle.inclusion_proof(idx, size, get)], "checkpoint": as_dict(anchor)}


async def consistency(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, first: int, second: int, *,
                      proof: Proof | None = None) -> dict[str, Any]:
    """The RFC 9162 consistency proof between two checkpointed tree sizes, with both checkpoints
    (with `proof`, only rows that verify count as checkpoints)."""
    if first > second:
        raise InvalidRequest("first must not exceed second",
                             errors=[{"field": "query.first", "reason": f"greater than second ({second})"}])
    async with connection(conn) as c:
        return await _consistency(c, tenant, first, second, proof)


async def _consistency(conn: asyncpg.Connection, tenant: str, first: int, second: int, proof: Proof | None,
                       ) -> dict[str, Any]:
    judge = Judge(proof) if proof is not None else None
    rows = {r["tree_size"]: r for r in await conn.fetch(PAIR, tenant, [first, second])
            if judge is None or judge.valid(r)}
    missing = [(name, size) for name, size in (("first", first), ("second", second)) if size not in rows]
    if missing:
        raise InvalidRequest("no checkpoint of tree size " + " or ".join(str(s) for _, s in missing),
                             errors=[{"field": f"query.{n}", "reason": "no checkpoint of this size"} for n, _ in missing])
    get = getter(tenant, await fetch_nodes(conn, tenant, merkle.consistency_nodes(first, second)))
    return {"tenant": tenant, "first": first, "second": second,
            "proof": [h.hex() for h in merkle.consistency_proof(first, second, get)],
            "first_checkpoint": as_dict(rows[first]), "second_checkpoint": as_dict(rows[second])}
