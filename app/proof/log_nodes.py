"""The Merkle log's stored nodes, and the problems a log can have (part of app/proof/log.py).

Every complete aligned subtree is stored (ledger_log_nodes), so proofs are point reads; leaves are
computed from the event hashes in ledger_log.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import asyncpg

from app.core.errors import ProblemError
from app.proof import merkle

# Inner nodes by (level, idx) pairs, leaves by idx (their hash is computed here from the event hash).
NODES = """
SELECT n.level, n.idx, n.hash, NULL::text AS event_hash
FROM unnest($2::smallint[], $3::bigint[]) AS w(level, idx)
JOIN ledger_log_nodes n ON n.tenant_id = $1 AND n.level = w.level AND n.idx = w.idx
UNION ALL
SELECT 0, l.idx, NULL, l.event_hash FROM ledger_log l WHERE l.tenant_id = $1 AND l.idx = ANY($4::bigint[])
"""
# When COPY meets nodes already there (planted by whoever holds the runtime role): they are kept,
# and compared by the caller when fewer rows went in than were given.
STORE_NODES = """
WITH stored AS (
    INSERT INTO ledger_log_nodes (tenant_id, level, idx, hash)
    SELECT $1, w.level, w.idx, w.hash FROM unnest($2::smallint[], $3::bigint[], $4::bytea[]) AS w(level, idx, hash)
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM stored
"""

class LogInconsistent(ProblemError):
    """The stored log does not extend a checkpoint already signed, or its stored subtrees are not
    those of its leaves (or it lacks nodes it must hold)."""

    status, slug, title = 409, "log-inconsistent", "The Merkle log does not extend its signed checkpoints"


class LogUnsealed(ProblemError):
    """Events in the log that the service did not write: their seal is not the service's."""

    status, slug, title = 409, "log-unsealed", "The log holds events the service did not seal"


class CheckpointForged(ProblemError):
    """A checkpoint row the service did not sign occupies the tree size it is about to sign."""

    status, slug, title = 409, "checkpoint-forged", "A checkpoint row the service did not sign is in the way"


async def fetch_nodes(conn: asyncpg.Connection, tenant: str, nodes: Iterable[merkle.Node]) -> dict[merkle.Node, bytes]:
    """The stored hashes of `nodes` ((level, idx); level 0 = leaf hash), in ONE query."""
    wanted = list(dict.fromkeys(nodes))
    inner = [n for n in wanted if n[0] > 0]
    leaves = [n[1] for n in wanted if n[0] == 0]
    if not wanted:
        return {}
    rows = await conn.fetch(NODES, tenant, [n[0] for n in inner], [n[1] for n in inner], leaves)
    return {(r["level"], r["idx"]): r["hash"] if r["level"] else merkle.leaf_hash(bytes.fromhex(r["event_hash"]))
            for r in rows}


def getter(tenant: str, found: dict[merkle.Node, bytes]) -> merkle.Get:
    def get(level: int, idx: int) -> bytes:
        try:
            return found[level, idx]
        except KeyError:
            raise LogInconsistent(f"the log of tenant {tenant!r} lacks its node (level {level}, index {idx}): "
                                  "rows were removed from ledger_log or ledger_log_nodes") from None
    return get


async def _store_nodes(conn: asyncpg.Connection, tenant: str, nodes: Sequence[tuple[int, int, bytes]],
                       ) -> list[tuple[int, int, bytes | None]]:
    """Insert the computed `nodes`; those already stored are kept (never a unique violation: the
    runtime role may have planted them). Returns (level, idx, stored hash) of every stored node that
    is not the computed one. Inserting first and comparing after is what makes this race-free: a
    concurrent insert of the same node is waited for by the INSERT, and committed (so visible) by
    the time the comparison reads. COPY first (a third of the cost of INSERT ... ON CONFLICT), in a
    savepoint: only when it meets a node already there does the slower path run."""
    if not nodes:
        return []
    try:
        async with conn.transaction():
            await conn.copy_records_to_table("ledger_log_nodes", columns=("tenant_id", "level", "idx", "hash"),
                                             records=[(tenant, lv, ix, h) for lv, ix, h in nodes])
        return []
    except asyncpg.UniqueViolationError:
        pass
    levels, idxs, hashes = [n[0] for n in nodes], [n[1] for n in nodes], [n[2] for n in nodes]
    if await conn.fetchval(STORE_NODES, tenant, levels, idxs, hashes) == len(nodes):
        return []
    stored = await fetch_nodes(conn, tenant, zip(levels, idxs))
    return [(lv, ix, stored.get((lv, ix))) for lv, ix, h in nodes if stored.get((lv, ix)) != h]
