"""The tenant-wide Merkle log and its signed checkpoints (docs/proof.md), on plain asyncpg.

Every function takes a connection; `extend` and `checkpoint` run in the caller's transaction
(read committed), `make_checkpoint` opens its own and writes the CHECKPOINT_DIR file after commit.

- `extend` gives queued events their places (ledger_log_take, under a per-tenant advisory lock
  held to commit) and stores every subtree they complete, so any root or proof afterwards is
  O(log n) point reads (app/proof/merkle.py), fetched in ONE query by `fetch_nodes`.
- `checkpoint` signs a tree head only after checking, itself, everything the runtime role (the
  service's own database account, which may append) could have planted since the previous one:
  every new event's seal (`LogUnsealed`: the service never signs an event it did not write), every
  subtree the new leaves complete, recomputed from the leaves (`LogInconsistent`), and that the
  log still extends every checkpoint it can see: the previous one in the database, the genuine
  signature of any row in the way, and the newest file in CHECKPOINT_DIR (which the database cannot
  touch). Each of these is logged at ERROR and nothing is signed.

Beside it: checkpoint_rows.py (a row is used or served only when its JWS verifies and says what
the row says), checkpoint_files.py (CHECKPOINT_DIR), proofs.py (inclusion and consistency).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from app.consents.chain import format_time
from app.proof import keys, merkle
from app.proof.context import Proof
from app.proof.checkpoint_files import newest_file, write_file
from app.proof.checkpoint_rows import CHECKPOINT_TYP, COLUMNS, GET, Judge, connection, newest_valid, signed_head
from app.webhooks import outbox
from app.proof.log_nodes import (  # noqa: F401 (re-exported: callers import them from here)
    CheckpointForged, LogInconsistent, LogUnsealed, _store_nodes, fetch_nodes, getter,
)

log = logging.getLogger("consent_ledger.proof")

TAKE_LIMIT = 50000
NAMED = 20  # at most this many events, nodes or rows named in one problem

# ledger_log_take with limit 0 places nothing: it takes the tenant's log lock (to commit), alone.
LOCK = "SELECT count(*) FROM ledger_log_take($1, 0)"
# Each entry with what its seal is checked against, its event's row (seal, chain version, and
# whether it is there with the logged hash), joined in the same statement: one primary-key probe
# per entry, no second round trip, nothing sent back that is not needed.
# A leaf is an event or a duty record (docs/duties.md): both are sealed the same way.
_SEAL_COLUMNS = ("coalesce(e.seal, d.seal) AS seal, coalesce(e.chain_version, 2) AS chain_version,"
                 " CASE WHEN e.id IS NULL AND d.id IS NULL THEN 'missing'"
                 " WHEN coalesce(e.hash, d.hash) <> {l}.event_hash THEN 'hash' END AS problem")
_JOIN = ("LEFT JOIN consent_events e ON e.id = {l}.event_id"
         " LEFT JOIN duty_records d ON d.id = {l}.event_id AND e.id IS NULL")
TAKE = f"""
SELECT t.idx, t.event_hash, {_SEAL_COLUMNS.format(l="t")}
FROM ledger_log_take($1, $2) AS t {_JOIN.format(l="t")}
"""
PLACED = f"""
SELECT l.idx, l.event_hash, {_SEAL_COLUMNS.format(l="l")}
FROM ledger_log l {_JOIN.format(l="l")}
WHERE l.tenant_id = $1 AND l.idx >= $2 AND l.idx < $3
ORDER BY l.idx
"""
EVENT_IDS = "SELECT idx, event_id FROM ledger_log WHERE tenant_id = $1 AND idx = ANY($2::bigint[])"
SIZE = "SELECT coalesce(max(idx) + 1, 0) FROM ledger_log WHERE tenant_id = $1"
QUEUED = "SELECT EXISTS (SELECT 1 FROM ledger_log_queue WHERE tenant_id = $1)"
INSERT = (f"INSERT INTO ledger_checkpoints ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
          " ON CONFLICT DO NOTHING RETURNING tree_size")
MAX_INT64 = 2**63 - 1


# -- the log ----------------------------------------------------------------------------------------


class _Edge:
    """The right edge of a tree (one complete subtree per set bit of its size, leaves included),
    grown by appending leaf hashes. Every node is computed here, from the leaves and an edge
    known to be right, never read back from ledger_log_nodes."""

    def __init__(self, size: int, get: merkle.Get) -> None:
        self.size = size
        self.nodes = {n: get(*n) for n in merkle.root_nodes(size)}

    def append(self, leaves: Sequence[bytes]) -> list[tuple[int, int, bytes]]:
        """The (level, idx, hash) of every subtree the leaves complete."""
        new = merkle.new_nodes(self.size, leaves, lambda level, idx: self.nodes[level, idx])
        if leaves:
            made = {(lv, ix): h for lv, ix, h in new}
            made[0, self.size + len(leaves) - 1] = leaves[-1]
            self.size += len(leaves)
            self.nodes = {n: made.get(n) or self.nodes[n] for n in merkle.root_nodes(self.size)}
        return new

    def root(self) -> bytes:
        return merkle.root_from_nodes(self.size, lambda level, idx: self.nodes[level, idx])


def _mismatch(tenant: str, wrong: Sequence[tuple[int, int, bytes | None]], count: int) -> LogInconsistent:
    named = ", ".join(f"(level {lv}, index {ix}: {'missing' if h is None else 'differs'})" for lv, ix, h in wrong[:NAMED])
    detail = (f"the stored subtrees of tenant {tenant!r} do not match the leaves: {count} node(s) of ledger_log_nodes "
              f"are not what the log's entries give ({named}{', ...' if count > NAMED else ''}); nothing was signed")
    log.error("%s", detail)
    return LogInconsistent(detail, extra={"nodes": [{"level": lv, "index": ix} for lv, ix, _ in wrong[:NAMED]]})


def _leaves(rows: Sequence[asyncpg.Record]) -> list[bytes]:
    return [merkle.leaf_hash(bytes.fromhex(r["event_hash"])) for r in rows]


def _consecutive(tenant: str, rows: Sequence[asyncpg.Record], start: int) -> None:
    if rows and (rows[0]["idx"] != start or rows[-1]["idx"] != start + len(rows) - 1):
        raise LogInconsistent(f"the log of tenant {tenant!r} has a gap: indexes {rows[0]['idx']} to "
                              f"{rows[-1]['idx']} ({len(rows)} entries) where {start} onwards were expected")


async def extend(conn: asyncpg.Connection, tenant: str, limit: int = TAKE_LIMIT) -> int:
    """Place every queued event of the tenant in its log, store the subtrees they complete, and
    return the tree size. In the caller's transaction (the tenant's log lock is held to its end).
    The frontier is read from the store; `checkpoint` does not rely on it (it recomputes)."""
    size: int | None = None
    while True:
        rows = sorted(await conn.fetch(TAKE, tenant, limit), key=lambda r: r["idx"])
        if not rows:
            break
        old = rows[0]["idx"]
        _consecutive(tenant, rows, old)
        edge = _Edge(old, getter(tenant, await fetch_nodes(conn, tenant, merkle.frontier_needed(old))))
        wrong = await _store_nodes(conn, tenant, edge.append(_leaves(rows)))
        if wrong:
            raise _mismatch(tenant, wrong, len(wrong))
        size = old + len(rows)
        if len(rows) < limit:
            break
    return size if size is not None else await conn.fetchval(SIZE, tenant)


# -- signing ----------------------------------------------------------------------------------------


def _signed(token: str, proof: Proof, tenant: str, where: str) -> tuple[int, bytes]:
    """(tree_size, root) of a checkpoint from its signature alone: its row or file may be edited."""
    try:
        head = signed_head(keys.verify(token, proof.jwks(), CHECKPOINT_TYP), tenant)
    except keys.ProofError as exc:
        raise LogInconsistent(f"{where} of tenant {tenant!r} does not verify: {exc}") from None
    if head is None:
        raise LogInconsistent(f"{where} of tenant {tenant!r} does not verify: it names another tenant or no valid "
                              "tree head")
    return head


def _anchors(previous: asyncpg.Record | None, heads: Iterable[tuple[int, bytes]], proof: Proof, tenant: str,
             checkpoint_dir: Path | None) -> list[tuple[str, int, bytes]]:
    """(where, size, root) of every signed checkpoint the new one must extend: the previous one (a
    verified row), what the JWS of bad rows above it genuinely sign, and the newest file."""
    out: list[tuple[str, int, bytes]] = []
    if previous is not None:
        out.append((f"checkpoint {previous['tree_size']} (database)", previous["tree_size"],
                    bytes.fromhex(previous["root_hash"])))
    for size, root in sorted(heads):
        out.append((f"checkpoint {size} (the signature in a ledger_checkpoints row that does not match it)", size, root))
    try:
        path = newest_file(checkpoint_dir, tenant) if checkpoint_dir is not None else None
    except OSError as exc:
        raise LogInconsistent(f"cannot read the checkpoint directory of tenant {tenant!r}: {exc}") from None
    if path is not None:
        try:
            token = json.loads(path.read_text(encoding="utf-8"))["jws"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LogInconsistent(f"cannot read the checkpoint file {path}: {exc}") from None
        size, root = _signed(token, proof, tenant, f"the checkpoint file {path}")
        out.append((f"checkpoint {size} ({path})", size, root))
    seen: set[tuple[int, bytes]] = set()
    return [a for a in out if (a[1], a[2]) not in seen and not seen.add((a[1], a[2]))]


def _rewritten(tenant: str, size: int, where: str, problem: str) -> LogInconsistent:
    log.error("the log no longer extends checkpoint %d: history was rewritten; nothing signed (tenant %r, %s: %s)",
              size, tenant, where, problem)
    return LogInconsistent(f"the log of tenant {tenant!r} no longer extends {where}: history was rewritten "
                           f"({problem}); nothing was signed")



_PROBLEMS = {"missing": "its event (or duty record) is gone from the ledger",
             "hash": "its event's (or duty record's) hash is not the one logged"}


def _unsealed(seal: Callable[[str], bytes], rows: Sequence[asyncpg.Record]) -> list[tuple[int, str]]:
    """(leaf index, why) of every entry (TAKE or PLACED, with its event's row) whose event does not
    carry the service's seal of the logged hash (chain version 1 events have none: they predate
    seals)."""
    bad = []
    for r in rows:
        stored = r["seal"]
        if r["problem"] is not None:
            why = _PROBLEMS.get(r["problem"], r["problem"])
        elif r["chain_version"] == 1:
            continue
        elif not isinstance(stored, str) or not hmac.compare_digest(seal(r["event_hash"]),
                                                                    stored.encode("utf-8", "replace")):
            why = "its seal is not the service's"
        else:
            continue
        bad.append((r["idx"], why))
    return bad


async def _refuse_unsealed(conn: asyncpg.Connection, tenant: str, bad: Sequence[tuple[int, str]],
                           count: int) -> LogUnsealed:
    ids = {r["idx"]: r["event_id"] for r in await conn.fetch(EVENT_IDS, tenant, [i for i, _ in bad[:NAMED]])}
    bad = [(i, ids.get(i), why) for i, why in bad[:NAMED]]
    named = "; ".join(f"leaf {i}, event {e}: {why}" for i, e, why in bad[:NAMED])
    detail = (f"the log of tenant {tenant!r} holds {count} event(s) the service did not write ({named}"
              f"{'; ...' if count > NAMED else ''}): someone with the service's database account appended them. "
              "Nothing was signed")
    log.error("ALARM for the privacy officer: %s", detail)
    return LogUnsealed(detail, extra={"events": [{"leaf_index": i, "event_id": str(e), "reason": why}
                                                 for i, e, why in bad[:NAMED]]})


async def checkpoint(conn: asyncpg.Connection, tenant: str, proof: Proof, *, force: bool = False,
                     checkpoint_dir: Path | None = None, limit: int = TAKE_LIMIT) -> dict[str, Any] | None:
    """Extend the log and sign its head if it grew since the last checkpoint; None if it did not.

    Under the tenant's log lock: the previous checkpoint is the newest row that verifies; its root
    is recomputed from the stored edge of the tree (which proves that edge). Then every entry
    placed since (by whoever called ledger_log_take) and every queued event is checked for the
    service's seal, and the subtrees they complete are computed from the leaves and that edge alone
    and compared with (or, when missing, added to) ledger_log_nodes. Finally the new tree must be
    consistent (RFC 9162) with every signed checkpoint in sight (`_anchors`). Any failure:
    LogInconsistent or LogUnsealed (or CheckpointForged when a row the service did not sign holds
    the new tree size), logged at ERROR, nothing signed. `force` runs the checks even
    when nothing new is to be signed. The row and its `ledger.checkpoint` webhook messages are
    written in the caller's transaction. Cost: proportional to the new entries, plus O(log n)."""
    await conn.fetchval(LOCK, tenant)
    previous, heads = await newest_valid(conn, tenant, Judge(proof))
    previous_size = previous["tree_size"] if previous is not None else 0
    placed = await conn.fetchval(SIZE, tenant)
    if not force and placed == previous_size and not await conn.fetchval(QUEUED, tenant):
        return None
    anchors = _anchors(previous, heads, proof, tenant, checkpoint_dir)
    where = f"checkpoint {previous_size} (database)"
    if placed < previous_size:
        raise _rewritten(tenant, previous_size, where, f"it has {placed} entries, fewer than the {previous_size} signed")
    try:
        edge = _Edge(previous_size, getter(tenant, await fetch_nodes(conn, tenant, merkle.root_nodes(previous_size))))
    except LogInconsistent as exc:
        raise _rewritten(tenant, previous_size, where, exc.detail) from None
    if previous is not None and edge.root() != bytes.fromhex(previous["root_hash"]):
        raise _rewritten(tenant, previous_size, where,
                         "the root of its first entries, recomputed from the stored log, is not the signed one")

    def seal(event_hash: str) -> bytes:  # keys.seal keeps the keyed state, made once per secret
        return keys.seal(proof.secret, event_hash).encode()
    unsealed: list[tuple[int, str]] = []
    wrong: list[tuple[int, int, bytes | None]] = []
    counts = [0, 0]

    async def append(rows: Sequence[asyncpg.Record]) -> None:
        _consecutive(tenant, rows, edge.size)
        bad = _unsealed(seal, rows)
        unsealed.extend(bad[:NAMED - len(unsealed)] if len(unsealed) < NAMED else ())
        stored_wrong = await _store_nodes(conn, tenant, edge.append(_leaves(rows)))
        wrong.extend(stored_wrong[:NAMED - len(wrong)] if len(wrong) < NAMED else ())
        counts[0] += len(bad)
        counts[1] += len(stored_wrong)

    # Entries placed since the previous checkpoint without one (ledger_log_take called by someone
    # else, whose nodes are not trusted), then the queue.
    for start in range(previous_size, placed, limit):
        end = min(start + limit, placed)
        rows = await conn.fetch(PLACED, tenant, start, end)
        if len(rows) != end - start:
            raise _rewritten(tenant, previous_size, where, f"only {len(rows)} of its entries {start} to {end - 1} "
                             "are in ledger_log: rows were removed")
        await append(rows)
    while True:
        rows = sorted(await conn.fetch(TAKE, tenant, limit), key=lambda r: r["idx"])
        if rows:
            await append(rows)
        if len(rows) < limit:
            break
    size = edge.size
    if size == 0:
        return None
    if counts[1]:
        raise _mismatch(tenant, wrong, counts[1])
    new_root = edge.root()
    wanted: set[merkle.Node] = set()
    for _, a_size, _ in anchors:
        if a_size <= size:
            wanted.update(merkle.root_nodes(a_size), merkle.consistency_nodes(a_size, size))
    get = getter(tenant, await fetch_nodes(conn, tenant, wanted))
    for a_where, a_size, a_root in anchors:
        try:
            if a_size > size:
                problem = f"it has {size} entries, fewer than the {a_size} signed"
            elif merkle.root_from_nodes(a_size, get) != a_root or not merkle.verify_consistency(
                    a_size, size, a_root, new_root, merkle.consistency_proof(a_size, size, get)):
                problem = "the root of its first entries, recomputed from the stored log, is not the signed one"
            else:
                continue
        except LogInconsistent as exc:
            problem = exc.detail
        raise _rewritten(tenant, a_size, a_where, problem)
    if counts[0]:
        raise await _refuse_unsealed(conn, tenant, unsealed, counts[0])
    if size == previous_size:
        return None
    issued_at = datetime.now(UTC)
    payload = {"tenant": tenant, "tree_size": size, "root_hash": new_root.hex(), "issued_at": format_time(issued_at)}
    token = proof.signer.sign(payload, CHECKPOINT_TYP)
    if await conn.fetchval(INSERT, tenant, size, payload["root_hash"], issued_at, proof.signer.kid, token) is None:
        raise await _occupied(conn, tenant, size)
    made = {**payload, "key_id": proof.signer.kid, "jws": token}
    await outbox.enqueue_checkpoint(conn, tenant=tenant, checkpoint=made)
    return made


async def _occupied(conn: asyncpg.Connection, tenant: str, size: int) -> CheckpointForged:
    row = await conn.fetchrow(GET, tenant, size)
    detail = (f"tree size {size} of tenant {tenant!r} is taken by a checkpoint row this service did not sign "
              f"(root_hash {row['root_hash'] if row else None!r}, key_id {row['key_id'] if row else None!r}, issued_at "
              f"{format_time(row['issued_at']) if row else None}): someone with write access to ledger_checkpoints "
              "put it there. Nothing was signed; the next checkpoint, at a larger size, will be")
    log.error("%s", detail)
    return CheckpointForged(detail, extra={"tree_size": size})


async def make_checkpoint(pool: asyncpg.Pool | asyncpg.Connection, tenant: str, proof: Proof, *,
                          checkpoint_dir: Path | None = None, force: bool = False) -> dict[str, Any] | None:
    """`checkpoint` in a transaction of its own; after commit, the file in `checkpoint_dir` (a
    failed write is logged: the checkpoint stands, and webhooks carry it too)."""
    async with connection(pool) as conn, conn.transaction():
        made = await checkpoint(conn, tenant, proof, force=force, checkpoint_dir=checkpoint_dir)
    if made is not None and checkpoint_dir is not None:
        try:
            write_file(checkpoint_dir, made)
        except OSError as exc:
            log.error("checkpoint %d of tenant %r signed but not written to %s: %s",
                      made["tree_size"], tenant, checkpoint_dir, exc)
    return made


