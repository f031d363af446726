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
- A checkpoint row is used or served only if its JWS verifies and says what the row says
  (`latest`, `get`, `list_after`, the proofs' anchors, the previous checkpoint): the runtime role
  may INSERT rows into ledger_checkpoints; it cannot sign them.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import jwt

from app.consents.chain import format_time
from app.core.errors import InvalidRequest, NotFound, ProblemError
from app.proof import keys, merkle
from app.proof.context import Proof
from app.webhooks import outbox

log = logging.getLogger("consent_ledger.proof")

CHECKPOINT_TYP = "consent-ledger-checkpoint+jwt"
TAKE_LIMIT = 50000
NAMED = 20  # at most this many events, nodes or rows named in one problem
SCAN = 32  # checkpoint rows read at a time while looking for the newest valid one

# ledger_log_take with limit 0 places nothing: it takes the tenant's log lock (to commit), alone.
LOCK = "SELECT count(*) FROM ledger_log_take($1, 0)"
# Each entry with what its seal is checked against, its event's row (seal, chain version, and
# whether it is there with the logged hash), joined in the same statement: one primary-key probe
# per entry, no second round trip, nothing sent back that is not needed.
_SEAL_COLUMNS = ("e.seal, e.chain_version, CASE WHEN e.id IS NULL THEN 'missing' WHEN e.hash <> {l}.event_hash"
                 " THEN 'hash' END AS problem")
TAKE = f"""
SELECT t.idx, t.event_hash, {_SEAL_COLUMNS.format(l="t")}
FROM ledger_log_take($1, $2) AS t LEFT JOIN consent_events e ON e.id = t.event_id
"""
PLACED = f"""
SELECT l.idx, l.event_hash, {_SEAL_COLUMNS.format(l="l")}
FROM ledger_log l LEFT JOIN consent_events e ON e.id = l.event_id
WHERE l.tenant_id = $1 AND l.idx >= $2 AND l.idx < $3
ORDER BY l.idx
"""
EVENT_IDS = "SELECT idx, event_id FROM ledger_log WHERE tenant_id = $1 AND idx = ANY($2::bigint[])"
SIZE = "SELECT coalesce(max(idx) + 1, 0) FROM ledger_log WHERE tenant_id = $1"
QUEUED = "SELECT EXISTS (SELECT 1 FROM ledger_log_queue WHERE tenant_id = $1)"
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
COLUMNS = "tenant_id, tree_size, root_hash, issued_at, key_id, jws"
NEWEST = (f"SELECT {COLUMNS} FROM ledger_checkpoints WHERE tenant_id = $1 AND ($2::bigint IS NULL OR tree_size < $2)"
          " ORDER BY tree_size DESC LIMIT $3")
GET = f"SELECT {COLUMNS} FROM ledger_checkpoints WHERE tenant_id = $1 AND tree_size = $2"
LIST_AFTER = (f"SELECT {COLUMNS} FROM ledger_checkpoints WHERE tenant_id = $1 AND tree_size > $2"
              " ORDER BY tree_size LIMIT $3")
PAIR = f"SELECT {COLUMNS} FROM ledger_checkpoints WHERE tenant_id = $1 AND tree_size = ANY($2::bigint[])"
INSERT = (f"INSERT INTO ledger_checkpoints ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
          " ON CONFLICT DO NOTHING RETURNING tree_size")
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
MAX_INT64 = 2**63 - 1


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


class CheckpointFileError(OSError):
    """A checkpoint file that must not be written or read: a tenant id that is no plain directory
    name inside CHECKPOINT_DIR, or a file already there with other content."""


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


# -- checkpoint rows: used and served only when they are what the service signed --------------------


VERDICTS = 65536  # rows whose verdict is remembered (and, for bad ones, reported once), per process
_verdicts: OrderedDict[bytes, tuple[str | None, tuple[int, bytes] | None]] = OrderedDict()
_reported: set[bytes] = set()


def _as_dict(row: asyncpg.Record) -> dict[str, Any]:
    return {"tenant": row["tenant_id"], "tree_size": row["tree_size"], "root_hash": row["root_hash"],
            "issued_at": format_time(row["issued_at"]), "key_id": row["key_id"], "jws": row["jws"]}


def _signed_head(payload: dict[str, Any], tenant: str) -> tuple[int, bytes] | None:
    """(tree_size, root) a verified checkpoint payload signs for `tenant`; None if it names another
    tenant or no valid tree head."""
    size, root = payload.get("tree_size"), payload.get("root_hash")
    if payload.get("tenant") != tenant or type(size) is not int or size < 0 or not isinstance(root, str):
        return None
    try:
        raw = bytes.fromhex(root)
    except ValueError:
        return None
    return (size, raw) if len(raw) == merkle.HASH_SIZE and raw.hex() == root else None


def _judge_row(row: asyncpg.Record, jwks: dict[str, Any]) -> tuple[str | None, tuple[int, bytes] | None]:
    try:
        payload = keys.verify(row["jws"], jwks, CHECKPOINT_TYP)
        kid = jwt.get_unverified_header(row["jws"]).get("kid")
    except (keys.ProofError, jwt.PyJWTError) as exc:
        return f"its JWS does not verify ({exc})", None
    head = _signed_head(payload, row["tenant_id"])
    expected = {"tenant": row["tenant_id"], "tree_size": row["tree_size"], "root_hash": row["root_hash"],
                "issued_at": format_time(row["issued_at"])}
    if payload != expected or type(payload.get("tree_size")) is not int or kid != row["key_id"]:
        return (f"the row does not say what its JWS signs (tenant {payload.get('tenant')!r}, tree_size "
                f"{payload.get('tree_size')!r}, root_hash {payload.get('root_hash')!r}, kid {kid!r})"), head
    return None, head


class _Judge:
    """Verdicts on checkpoint rows with one key set: (why the row is not a checkpoint the service
    signed, or None; the tree head its JWS genuinely signs for the row's tenant, or None). A bad row
    is logged at ERROR the first time this process meets it."""

    def __init__(self, proof: Proof) -> None:
        self.jwks = proof.jwks()
        self.digest = hashlib.sha256(json.dumps(self.jwks, sort_keys=True).encode()).digest()

    def __call__(self, row: asyncpg.Record) -> tuple[str | None, tuple[int, bytes] | None]:
        key = hashlib.sha256(self.digest + json.dumps(
            [row["tenant_id"], row["tree_size"], row["root_hash"], format_time(row["issued_at"]), row["key_id"],
             row["jws"]]).encode()).digest()
        verdict = _verdicts.get(key)
        if verdict is not None:
            _verdicts.move_to_end(key)
            return verdict
        verdict = _verdicts[key] = _judge_row(row, self.jwks)
        if len(_verdicts) > VERDICTS:
            _verdicts.popitem(last=False)
        if verdict[0] is not None and key not in _reported and len(_reported) < VERDICTS:
            _reported.add(key)
            log.error("checkpoint row (tenant %r, tree_size %d) is not a checkpoint this service signed: %s; it is "
                      "neither served nor used (someone with write access to ledger_checkpoints put it there)",
                      row["tenant_id"], row["tree_size"], verdict[0])
        return verdict

    def valid(self, row: asyncpg.Record) -> bool:
        return self(row)[0] is None


async def _newest_valid(conn: asyncpg.Connection, tenant: str, judge: _Judge, below: int | None = None,
                        ) -> tuple[asyncpg.Record | None, set[tuple[int, bytes]]]:
    """The newest checkpoint row that verifies (below tree size `below`), and the tree heads the
    JWS of the bad rows above it genuinely sign (a row edited by a DBA still carries its signature)."""
    heads: set[tuple[int, bytes]] = set()
    while True:
        rows = await conn.fetch(NEWEST, tenant, below, SCAN)
        for row in rows:
            why, head = judge(row)
            if why is None:
                return row, heads
            if head is not None:
                heads.add(head)
        if len(rows) < SCAN:
            return None, heads
        below = rows[-1]["tree_size"]


async def latest(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, proof: Proof | None = None,
                 ) -> dict[str, Any] | None:
    """The newest checkpoint whose JWS verifies with `proof`'s keys and says what its row says.
    Without `proof`, the newest row as stored: only for a caller that verifies the JWS itself."""
    async with _connection(conn) as c:
        if proof is None:
            row = await c.fetchrow(NEWEST, tenant, None, 1)
        else:
            row, _ = await _newest_valid(c, tenant, _Judge(proof))
    return _as_dict(row) if row else None


async def get(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, tree_size: int, proof: Proof | None = None,
              ) -> dict[str, Any] | None:
    """The checkpoint of `tree_size`, None when there is none or (with `proof`) its row does not verify."""
    row = await conn.fetchrow(GET, tenant, tree_size)
    return _as_dict(row) if row and (proof is None or _Judge(proof).valid(row)) else None


async def list_after(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, after_size: int, limit: int,
                     proof: Proof | None = None) -> list[dict[str, Any]]:
    """Checkpoints with tree_size > after_size, oldest first (keyset paging); with `proof`, only rows
    that verify (a page is filled past the others)."""
    if proof is None:
        return [_as_dict(r) for r in await conn.fetch(LIST_AFTER, tenant, after_size, limit)]
    judge, out = _Judge(proof), []
    async with _connection(conn) as c:
        while len(out) < limit:
            want = limit - len(out)
            rows = await c.fetch(LIST_AFTER, tenant, after_size, want)
            out += [_as_dict(r) for r in rows if judge.valid(r)]
            if len(rows) < want:
                break
            after_size = rows[-1]["tree_size"]
    return out


# -- CHECKPOINT_DIR ---------------------------------------------------------------------------------


def _refuse_path(directory: Path, tenant: Any, why: str) -> CheckpointFileError:
    log.error("refused a checkpoint file path for tenant %r in %s: %s", tenant, directory, why)
    return CheckpointFileError(f"tenant {tenant!r} has no checkpoint directory in {directory}: {why}")


def tenant_dir(directory: Path, tenant: str) -> Path:
    """`<directory>/<tenant>`, or CheckpointFileError (logged) unless it is a plain directory name
    directly inside `directory` once every symlink is resolved: a tenant id is not a path."""
    base = Path(directory).resolve()
    if not isinstance(tenant, str) or tenant in ("", ".", "..") or any(c in tenant for c in "/\\\0"):
        raise _refuse_path(base, tenant, "a tenant id with a path separator, NUL, or that is '.' or '..'")
    folder = (base / tenant).resolve()
    if folder.parent != base or folder.name != tenant:
        raise _refuse_path(base, tenant, f"it resolves to {folder}, not a directory of its own inside {base}")
    return folder


def newest_file(directory: Path, tenant: str) -> Path | None:
    folder = tenant_dir(directory, tenant)
    files = sorted(folder.glob("[0-9]*.json")) if folder.is_dir() else []
    return files[-1] if files else None


def write_file(directory: Path, checkpoint: dict[str, Any]) -> Path:
    """`<dir>/<tenant>/<tree_size:012d>.json`, atomically (a temporary file hard-linked into place)
    and never over another file: one already there with the same checkpoint is fine; with another
    one, CheckpointFileError, logged at ERROR (someone else writes into CHECKPOINT_DIR)."""
    tenant, size = checkpoint["tenant"], checkpoint["tree_size"]
    if type(size) is not int or size < 0:
        raise CheckpointFileError(f"tree_size {size!r} is not a tree size")
    folder = tenant_dir(directory, tenant)
    folder.mkdir(parents=True, exist_ok=True)
    folder = tenant_dir(directory, tenant)  # again: it may have been there already, as a symlink
    path = folder / f"{size:012d}.json"
    data = (json.dumps(checkpoint, indent=2, sort_keys=True) + "\n").encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if the name exists, like O_EXCL, and never shows a partial file
        except FileExistsError:
            _same_or_refuse(path, checkpoint)
        except OSError:  # no hard links on this file system: create it exclusively instead
            try:
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except FileExistsError:
                _same_or_refuse(path, checkpoint)
            else:
                with os.fdopen(out, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def _same_or_refuse(path: Path, checkpoint: dict[str, Any]) -> None:
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        existing = f"unreadable ({exc})"
    if existing != json.loads(json.dumps(checkpoint)):
        log.error("the checkpoint file %s already exists with other content: not overwritten (someone else writes "
                  "into CHECKPOINT_DIR, or two services sign for tenant %r)", path, checkpoint["tenant"])
        raise CheckpointFileError(f"{path} already exists with another checkpoint: not overwritten")


# -- signing ----------------------------------------------------------------------------------------


def _signed(token: str, proof: Proof, tenant: str, where: str) -> tuple[int, bytes]:
    """(tree_size, root) of a checkpoint from its signature alone: its row or file may be edited."""
    try:
        head = _signed_head(keys.verify(token, proof.jwks(), CHECKPOINT_TYP), tenant)
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


def sealer(secret: bytes) -> Callable[[str], bytes]:
    """`keys.seal(secret, hash)` (as ASCII bytes) at half the cost: the keyed state is made once and
    copied per event, not re-derived from the key each time."""
    base = hmac.new(secret, keys.SEAL_CONTEXT, hashlib.sha256)

    def seal(event_hash: str) -> bytes:
        mac = base.copy()
        mac.update(event_hash.encode())
        return mac.hexdigest().encode()
    return seal


_PROBLEMS = {"missing": "its event is not in consent_events", "hash": "its event's hash is not the one logged"}


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
    previous, heads = await _newest_valid(conn, tenant, _Judge(proof))
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

    seal = sealer(proof.secret)
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
                    tree_size: int | None = None, *, proof: Proof | None = None) -> dict[str, Any]:
    """The RFC 9162 audit path of an event in a checkpointed tree (the latest by default). With
    `proof`, only against a checkpoint row that verifies (pass it: without, the row is as stored)."""
    async with _connection(conn) as c:
        return await _inclusion(c, tenant, event_id, tree_size, proof)


async def _inclusion(conn: asyncpg.Connection, tenant: str, event_id: Any, tree_size: int | None,
                     proof: Proof | None) -> dict[str, Any]:
    if tree_size is None:
        row = await conn.fetchrow(LEAF_LATEST, tenant, event_id)
    else:
        row = await conn.fetchrow(LEAF_AT, tenant, event_id, tree_size)
    anchor: asyncpg.Record | None = row if row["tree_size"] is not None else None
    if anchor is not None and proof is not None:
        judge = _Judge(proof)
        if not judge.valid(anchor):
            anchor = None if tree_size is not None else (await _newest_valid(conn, tenant, judge, row["tree_size"]))[0]
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
            "audit_path": [h.hex() for h in merkle.inclusion_proof(idx, size, get)], "checkpoint": _as_dict(anchor)}


async def consistency(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, first: int, second: int, *,
                      proof: Proof | None = None) -> dict[str, Any]:
    """The RFC 9162 consistency proof between two checkpointed tree sizes, with both checkpoints
    (with `proof`, only rows that verify count as checkpoints)."""
    if first > second:
        raise InvalidRequest("first must not exceed second",
                             errors=[{"field": "query.first", "reason": f"greater than second ({second})"}])
    async with _connection(conn) as c:
        return await _consistency(c, tenant, first, second, proof)


async def _consistency(conn: asyncpg.Connection, tenant: str, first: int, second: int, proof: Proof | None,
                       ) -> dict[str, Any]:
    judge = _Judge(proof) if proof is not None else None
    rows = {r["tree_size"]: r for r in await conn.fetch(PAIR, tenant, [first, second])
            if judge is None or judge.valid(r)}
    missing = [(name, size) for name, size in (("first", first), ("second", second)) if size not in rows]
    if missing:
        raise InvalidRequest("no checkpoint of tree size " + " or ".join(str(s) for _, s in missing),
                             errors=[{"field": f"query.{n}", "reason": "no checkpoint of this size"} for n, _ in missing])
    get = getter(tenant, await fetch_nodes(conn, tenant, merkle.consistency_nodes(first, second)))
    return {"tenant": tenant, "first": first, "second": second,
            "proof": [h.hex() for h in merkle.consistency_proof(first, second, get)],
            "first_checkpoint": _as_dict(rows[first]), "second_checkpoint": _as_dict(rows[second])}
