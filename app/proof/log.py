"""The tenant-wide Merkle log and its signed checkpoints (docs/proof.md), on plain asyncpg.

Every function takes a connection; `extend` and `checkpoint` run in the caller's transaction
(read committed), `make_checkpoint` opens its own and writes the CHECKPOINT_DIR file after commit.

- `extend` gives queued events their places (ledger_log_take, under a per-tenant advisory lock
  held to commit) and stores every subtree they complete, so any root or proof afterwards is
  O(log n) point reads (app/proof/merkle.py), fetched in ONE query by `fetch_nodes`.
- `checkpoint` signs a tree head only if the stored log still extends every checkpoint it can
  see: the previous one in the database and the newest file in CHECKPOINT_DIR (which the database
  cannot touch). A rewrite of history is logged at ERROR and nothing is signed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from app.consents.chain import format_time
from app.core.errors import InvalidRequest, NotFound, ProblemError
from app.proof import keys, merkle
from app.proof.context import Proof
from app.webhooks import outbox

log = logging.getLogger("consent_ledger.proof")

CHECKPOINT_TYP = "consent-ledger-checkpoint+jwt"
TAKE_LIMIT = 50000

TAKE = "SELECT idx, event_hash FROM ledger_log_take($1, $2)"
SIZE = "SELECT coalesce(max(idx) + 1, 0) FROM ledger_log WHERE tenant_id = $1"
# Inner nodes by (level, idx) pairs, leaves by idx (their hash is computed here from the event hash).
NODES = """
SELECT n.level, n.idx, n.hash, NULL::text AS event_hash
FROM unnest($2::smallint[], $3::bigint[]) AS w(level, idx)
JOIN ledger_log_nodes n ON n.tenant_id = $1 AND n.level = w.level AND n.idx = w.idx
UNION ALL
SELECT 0, l.idx, NULL, l.event_hash FROM ledger_log l WHERE l.tenant_id = $1 AND l.idx = ANY($4::bigint[])
"""
COLUMNS = "tenant_id, tree_size, root_hash, issued_at, key_id, jws"
LATEST = f"SELECT {COLUMNS} FROM ledger_checkpoints WHERE tenant_id = $1 ORDER BY tree_size DESC LIMIT 1"
GET = f"SELECT {COLUMNS} FROM ledger_checkpoints WHERE tenant_id = $1 AND tree_size = $2"
LIST_AFTER = (f"SELECT {COLUMNS} FROM ledger_checkpoints WHERE tenant_id = $1 AND tree_size > $2"
              " ORDER BY tree_size LIMIT $3")
PAIR = f"SELECT {COLUMNS} FROM ledger_checkpoints WHERE tenant_id = $1 AND tree_size = ANY($2::bigint[])"
INSERT = f"INSERT INTO ledger_checkpoints ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
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


class LogInconsistent(ProblemError):
    """The stored log does not extend a checkpoint already signed (or lacks nodes it must hold)."""

    status, slug, title = 409, "log-inconsistent", "The Merkle log does not extend its signed checkpoints"


# -- the log ----------------------------------------------------------------------------------------


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


async def extend(conn: asyncpg.Connection, tenant: str, limit: int = TAKE_LIMIT) -> int:
    """Place every queued event of the tenant in its log, store the subtrees they complete, and
    return the tree size. In the caller's transaction (the tenant's log lock is held to its end)."""
    size: int | None = None
    while True:
        rows = sorted(await conn.fetch(TAKE, tenant, limit), key=lambda r: r["idx"])
        if not rows:
            break
        old = rows[0]["idx"]
        if rows[-1]["idx"] != old + len(rows) - 1:
            raise LogInconsistent(f"ledger_log_take gave tenant {tenant!r} non-consecutive indexes")
        leaves = [merkle.leaf_hash(bytes.fromhex(r["event_hash"])) for r in rows]
        get = getter(tenant, await fetch_nodes(conn, tenant, merkle.frontier_needed(old)))
        new = merkle.new_nodes(old, leaves, get)
        if new:
            await conn.copy_records_to_table("ledger_log_nodes", columns=("tenant_id", "level", "idx", "hash"),
                                             records=[(tenant, lv, ix, h) for lv, ix, h in new])
        size = old + len(rows)
        if len(rows) < limit:
            break
    return size if size is not None else await conn.fetchval(SIZE, tenant)


# -- checkpoints ------------------------------------------------------------------------------------


def _as_dict(row: asyncpg.Record) -> dict[str, Any]:
    return {"tenant": row["tenant_id"], "tree_size": row["tree_size"], "root_hash": row["root_hash"],
            "issued_at": format_time(row["issued_at"]), "key_id": row["key_id"], "jws": row["jws"]}


async def latest(conn: asyncpg.Connection | asyncpg.Pool, tenant: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(LATEST, tenant)
    return _as_dict(row) if row else None


async def get(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, tree_size: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(GET, tenant, tree_size)
    return _as_dict(row) if row else None


async def list_after(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, after_size: int, limit: int,
                     ) -> list[dict[str, Any]]:
    """Checkpoints with tree_size > after_size, oldest first (keyset paging)."""
    return [_as_dict(r) for r in await conn.fetch(LIST_AFTER, tenant, after_size, limit)]


def _signed(token: str, proof: Proof, tenant: str, where: str) -> tuple[int, bytes]:
    """(tree_size, root) of a checkpoint from its signature alone: its row or file may be edited."""
    try:
        payload = keys.verify(token, proof.jwks(), CHECKPOINT_TYP)
        size, root = payload["tree_size"], bytes.fromhex(payload["root_hash"])
        if payload["tenant"] != tenant or not isinstance(size, int) or len(root) != merkle.HASH_SIZE:
            raise ValueError("it names another tenant or no valid tree head")
    except (keys.ProofError, KeyError, TypeError, ValueError) as exc:
        raise LogInconsistent(f"{where} of tenant {tenant!r} does not verify: {exc}") from None
    return size, root


def newest_file(directory: Path, tenant: str) -> Path | None:
    files = sorted((Path(directory) / tenant).glob("[0-9]*.json")) if (Path(directory) / tenant).is_dir() else []
    return files[-1] if files else None


def write_file(directory: Path, checkpoint: dict[str, Any]) -> Path:
    """`<dir>/<tenant>/<tree_size:012d>.json`, atomically (a temporary file renamed into place)."""
    folder = Path(directory) / checkpoint["tenant"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{checkpoint['tree_size']:012d}.json"
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(checkpoint, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _anchors(previous: dict[str, Any] | None, proof: Proof, tenant: str, checkpoint_dir: Path | None,
             ) -> list[tuple[str, int, bytes]]:
    """(where, size, root) of every signed checkpoint the new one must extend."""
    out: list[tuple[str, int, bytes]] = []
    if previous is not None:
        where = f"checkpoint {previous['tree_size']} (database)"
        size, root = _signed(previous["jws"], proof, tenant, where)
        if size != previous["tree_size"] or root.hex() != previous["root_hash"]:
            raise LogInconsistent(f"the row of {where} of tenant {tenant!r} does not match its signature")
        out.append((where, size, root))
    path = newest_file(checkpoint_dir, tenant) if checkpoint_dir is not None else None
    if path is not None:
        try:
            token = json.loads(path.read_text(encoding="utf-8"))["jws"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LogInconsistent(f"cannot read the checkpoint file {path}: {exc}") from None
        size, root = _signed(token, proof, tenant, f"the checkpoint file {path}")
        if all((size, root) != (s, r) for _, s, r in out):
            out.append((f"checkpoint {size} ({path})", size, root))
    return out


async def checkpoint(conn: asyncpg.Connection, tenant: str, proof: Proof, *, force: bool = False,
                     checkpoint_dir: Path | None = None) -> dict[str, Any] | None:
    """Extend the log and sign its head if it grew since the last checkpoint; None if it did not.

    Before signing, the stored log must still extend the previous checkpoint and the newest file in
    `checkpoint_dir` (roots recomputed from the stored nodes, an RFC 9162 consistency proof checked);
    otherwise LogInconsistent, and nothing is signed. `force` runs that check even when nothing new
    is to be signed (an auditor's "checkpoint now" re-checks the log either way). The checkpoint row
    and its `ledger.checkpoint` webhook messages are written in the caller's transaction."""
    size = await extend(conn, tenant)
    previous = await latest(conn, tenant)
    previous_size = previous["tree_size"] if previous else 0
    if size == 0 or (size == previous_size and not force):
        return None
    anchors = _anchors(previous, proof, tenant, checkpoint_dir)
    wanted = set(merkle.root_nodes(size))
    for _, a_size, _ in anchors:
        if a_size <= size:
            wanted.update(merkle.root_nodes(a_size), merkle.consistency_nodes(a_size, size))
    get = getter(tenant, await fetch_nodes(conn, tenant, wanted))
    failure: tuple[int, str, str] | None = None
    try:
        new_root = merkle.root_from_nodes(size, get)
    except LogInconsistent as exc:  # a node gone: nothing can be signed, whatever it extends
        failure = (previous_size, f"checkpoint {previous_size}", exc.detail)
    for where, a_size, a_root in anchors if failure is None else ():
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
        failure = (a_size, where, problem)
        break
    if failure is not None:
        a_size, where, problem = failure
        log.error("the log no longer extends checkpoint %d: history was rewritten; nothing signed "
                  "(tenant %r, %s: %s)", a_size, tenant, where, problem)
        raise LogInconsistent(f"the log of tenant {tenant!r} no longer extends {where}: history was rewritten "
                              f"({problem}); nothing was signed")
    if size == previous_size:
        return None
    issued_at = datetime.now(UTC)
    payload = {"tenant": tenant, "tree_size": size, "root_hash": new_root.hex(), "issued_at": format_time(issued_at)}
    token = proof.signer.sign(payload, CHECKPOINT_TYP)
    await conn.execute(INSERT, tenant, size, payload["root_hash"], issued_at, proof.signer.kid, token)
    made = {**payload, "key_id": proof.signer.kid, "jws": token}
    await outbox.enqueue_checkpoint(conn, tenant=tenant, checkpoint=made)
    return made


@contextlib.asynccontextmanager
async def _connection(db: asyncpg.Pool | asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the pool for a few statements in a row (one acquire), or the one given."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


async def make_checkpoint(pool: asyncpg.Pool | asyncpg.Connection, tenant: str, proof: Proof, *,
                          checkpoint_dir: Path | None = None, force: bool = False) -> dict[str, Any] | None:
    """`checkpoint` in a transaction of its own; after commit, the file in `checkpoint_dir` (a
    failed write is logged: the checkpoint stands, and webhooks carry it too)."""
    async with _connection(pool) as conn, conn.transaction():
        made = await checkpoint(conn, tenant, proof, force=force, checkpoint_dir=checkpoint_dir)
    if made is not None and checkpoint_dir is not None:
        try:
            write_file(checkpoint_dir, made)
        except OSError as exc:
            log.error("checkpoint %d of tenant %r signed but not written to %s: %s",
                      made["tree_size"], tenant, checkpoint_dir, exc)
    return made


# -- proofs -----------------------------------------------------------------------------------------


async def inclusion(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, event_id: Any,
                    tree_size: int | None = None) -> dict[str, Any]:
    """The RFC 9162 audit path of an event in a checkpointed tree (the latest by default)."""
    async with _connection(conn) as conn:
        return await _inclusion(conn, tenant, event_id, tree_size)


async def _inclusion(conn: asyncpg.Connection, tenant: str, event_id: Any, tree_size: int | None) -> dict[str, Any]:
    if tree_size is None:
        row = await conn.fetchrow(LEAF_LATEST, tenant, event_id)
    else:
        row = await conn.fetchrow(LEAF_AT, tenant, event_id, tree_size)
    if tree_size is not None and row["tree_size"] is None:
        raise InvalidRequest(f"there is no checkpoint of tree size {tree_size}",
                             errors=[{"field": "query.tree_size", "reason": "no checkpoint of this size"}])
    if row["idx"] is None and not row["queued"]:
        raise NotFound(f"no event {event_id} in this tenant's log")
    if row["idx"] is None or row["tree_size"] is None or row["idx"] >= row["tree_size"]:
        if tree_size is not None and row["idx"] is not None:
            raise NotFound(f"event {event_id} (leaf {row['idx']}) is not in the tree of size {tree_size}; "
                           "ask for a later checkpoint", extra={"pending": False, "leaf_index": row["idx"]})
        raise NotFound(f"event {event_id} is not in a checkpoint yet: it enters the next one",
                       extra={"pending": True, "leaf_index": row["idx"]})
    idx, size = row["idx"], row["tree_size"]
    get = getter(tenant, await fetch_nodes(conn, tenant, merkle.inclusion_nodes(idx, size)))
    return {"tenant": tenant, "event_id": str(event_id), "leaf_index": idx, "tree_size": size,
            "event_hash": row["event_hash"], "leaf_hash": merkle.leaf_hash(bytes.fromhex(row["event_hash"])).hex(),
            "audit_path": [h.hex() for h in merkle.inclusion_proof(idx, size, get)], "checkpoint": _as_dict(row)}


async def consistency(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, first: int, second: int,
                      ) -> dict[str, Any]:
    """The RFC 9162 consistency proof between two checkpointed tree sizes, with both checkpoints."""
    if first > second:
        raise InvalidRequest("first must not exceed second",
                             errors=[{"field": "query.first", "reason": f"greater than second ({second})"}])
    async with _connection(conn) as conn:
        return await _consistency(conn, tenant, first, second)


async def _consistency(conn: asyncpg.Connection, tenant: str, first: int, second: int) -> dict[str, Any]:
    rows = {r["tree_size"]: r for r in await conn.fetch(PAIR, tenant, [first, second])}
    missing = [(name, size) for name, size in (("first", first), ("second", second)) if size not in rows]
    if missing:
        raise InvalidRequest("no checkpoint of tree size " + " or ".join(str(s) for _, s in missing),
                             errors=[{"field": f"query.{n}", "reason": "no checkpoint of this size"} for n, _ in missing])
    get = getter(tenant, await fetch_nodes(conn, tenant, merkle.consistency_nodes(first, second)))
    return {"tenant": tenant, "first": first, "second": second,
            "proof": [h.hex() for h in merkle.consistency_proof(first, second, get)],
            "first_checkpoint": _as_dict(rows[first]), "second_checkpoint": _as_dict(rows[second])}
