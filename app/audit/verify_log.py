"""The last stage of a tenant-wide verification: the tenant's signed checkpoints against its log.

Every checkpoint row is judged as the service judges them before use (app/proof/checkpoint_rows.py:
its JWS verifies with the service's keys and says what the row says); the root of every genuine
signed tree head (valid rows, the genuine signature left in an edited row, the newest file in
CHECKPOINT_DIR: app/proof/log.py `_anchors`) is then recomputed from the log's leaves, streamed in
index order through a right edge of their own (merkle.Frontier: the same RFC 9162 roots the
checkpointer signs, recomputed without reading a stored node). Equal roots at every size
make the checkpoints consistent with the log and so with each other. Also: log entries whose
subject is no longer in the ledger (a deleted subject is otherwise never visited).
"""

from __future__ import annotations

import operator
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from app.proof import log as proof_log
from app.proof import merkle
from app.proof.checkpoint_rows import COLUMNS, Judge
from app.proof.context import Proof

PAGE = 50_000
LISTED = 20
CHECKPOINTS = f"SELECT {COLUMNS} FROM ledger_checkpoints WHERE tenant_id = $1 ORDER BY tree_size"
LEAVES = "SELECT idx, event_hash FROM ledger_log WHERE tenant_id = $1 AND idx >= $2 ORDER BY idx LIMIT $3"
# Anti-joins PostgreSQL runs as one hash join over the tenant's log (no per-entry round trip).
ORPHANS = """
SELECT 'log' AS place, l.subject_id, count(*) AS entries FROM ledger_log l
WHERE l.tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM subjects s WHERE s.id = l.subject_id AND s.tenant_id = $1)
GROUP BY l.subject_id
UNION ALL
SELECT 'queue', q.subject_id, count(*) FROM ledger_log_queue q
WHERE q.tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM subjects s WHERE s.id = q.subject_id AND s.tenant_id = $1)
GROUP BY q.subject_id
LIMIT $2
"""


def _brk(kind: str, detail: str, **where: Any) -> dict[str, Any]:
    return {"kind": kind, "detail": detail, **where}


async def check_log(conn: asyncpg.Connection, tenant: str, proof: Proof, *, checkpoint_dir: Any = None,
                    beat: Callable[[], Awaitable[None]] | None = None) -> dict[str, Any]:
    """{"checkpoints", "checkpoints_verified", "tree_size", "breaks"} of the tenant's log, read in one
    repeatable-read snapshot; `beat()` after each page of leaves (the run's lease)."""
    judge = Judge(proof)
    breaks: list[dict[str, Any]] = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(CHECKPOINTS, tenant)
        heads: set[tuple[int, bytes]] = set()
        targets: dict[int, list[tuple[str, bytes]]] = {}
        verified = 0
        for row in rows:
            why, head = judge(row)
            if why is not None:
                breaks.append(_brk("checkpoint_signature", f"the checkpoint row of tree size {row['tree_size']} is "
                                   f"not one this service signed: {why}", tree_size=row["tree_size"]))
                if head is not None:
                    heads.add(head)
                continue
            verified += 1
            targets.setdefault(row["tree_size"], []).append(
                (f"checkpoint {row['tree_size']}", bytes.fromhex(row["root_hash"])))
        try:
            for where, size, root in proof_log._anchors(None, heads, proof, tenant, checkpoint_dir):
                targets.setdefault(size, []).append((where, root))
        except proof_log.LogInconsistent as exc:
            breaks.append(_brk("checkpoint_file", exc.detail))
        size = await _replay(conn, tenant, targets, breaks, beat)
        for row in await conn.fetch(ORPHANS, tenant, LISTED):
            where = "the Merkle log" if row["place"] == "log" else "the log queue"
            breaks.append(_brk("missing_event", f"{where} holds {row['entries']} event(s) or duty record(s) of "
                               f"subject {row['subject_id']}, which is no longer in the ledger",
                               subject=str(row["subject_id"])))
    return {"checkpoints": len(rows), "checkpoints_verified": verified, "tree_size": size, "breaks": breaks}


async def _replay(conn: asyncpg.Connection, tenant: str, targets: dict[int, list[tuple[str, bytes]]],
                  breaks: list[dict[str, Any]], beat: Callable[[], Awaitable[None]] | None) -> int:
    """Stream the leaves; at each target size compare the recomputed root with the signed ones."""
    edge = merkle.Frontier()
    sizes = sorted(targets)
    if 0 in targets:
        _compare(targets.pop(0), 0, merkle.EMPTY_ROOT, breaks)
        sizes.remove(0)
    pending = iter(sizes)
    next_size = next(pending, None)
    while True:
        rows = await conn.fetch(LEAVES, tenant, edge.size, PAGE)
        if rows and (rows[0]["idx"] != edge.size or rows[-1]["idx"] != edge.size + len(rows) - 1):
            gap = next(edge.size + i for i, r in enumerate(rows) if r["idx"] != edge.size + i)
            breaks.append(_brk("log_gap", f"the log has no entry {gap}: entries were removed", leaf_index=gap))
            rows = rows[:gap - edge.size]
        leaves = _leaves(rows, breaks)
        at = 0
        while next_size is not None and next_size - edge.size <= len(leaves) - at:
            take = next_size - edge.size
            edge.extend(leaves[at:at + take])
            at += take
            _compare(targets[next_size], next_size, edge.root(), breaks)
            next_size = next(pending, None)
        edge.extend(leaves[at:])
        if beat is not None:
            await beat()
        if len(rows) < PAGE or breaks and breaks[-1]["kind"] == "log_gap":
            break
    for size in ([next_size] if next_size is not None else []) + list(pending):
        for where, _ in targets[size]:
            breaks.append(_brk("checkpoint_beyond_log", f"{where} signs {size} entries; the log has {edge.size}: "
                               "entries were removed", tree_size=size))
    return edge.size


_HASH = operator.itemgetter("event_hash")


def _leaves(rows: list[asyncpg.Record], breaks: list[dict[str, Any]]) -> list[bytes]:
    """The leaf hashes of a page of log entries. An entry whose hash is not one (written behind
    the service's back) is a break, and keeps its place with the hash of no bytes."""
    fromhex = bytes.fromhex
    try:
        return list(map(merkle.leaf_hash, map(fromhex, map(_HASH, rows))))
    except (TypeError, ValueError):
        pass
    leaves = []
    for r in rows:
        try:
            leaves.append(merkle.leaf_hash(fromhex(r["event_hash"])))
        except (TypeError, ValueError):
            breaks.append(_brk("log_entry", f"log entry {r['idx']} holds no SHA-256 ({str(r['event_hash'])[:80]!r})",
                               leaf_index=r["idx"]))
            leaves.append(merkle.leaf_hash(b""))
    return leaves


def _compare(signed: list[tuple[str, bytes]], size: int, root: bytes, breaks: list[dict[str, Any]]) -> None:
    for where, expected in signed:
        if expected != root:
            breaks.append(_brk("checkpoint_root", f"the first {size} entries of the log give root {root.hex()}; "
                               f"{where} signed {expected.hex()}: history was rewritten", tree_size=size))
