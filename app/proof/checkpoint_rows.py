"""Checkpoint rows are used and served only when they are what the service signed: the JWS
verifies with the service's keys and says what the row says. The runtime role can INSERT rows;
a fake one is skipped (and reported once), never served nor built upon."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import jwt

from app.consents.chain import format_time
from app.proof import keys, merkle
from app.proof.context import Proof

log = logging.getLogger("consent_ledger.proof")


@contextlib.asynccontextmanager
async def connection(db: asyncpg.Pool | asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the pool for a few statements in a row (one acquire), or the one given."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


CHECKPOINT_TYP = "consent-ledger-checkpoint+jwt"
SCAN = 32  # checkpoint rows read at a time while looking for the newest valid one

COLUMNS = "tenant_id, tree_size, root_hash, issued_at, key_id, jws"
NEWEST = (f"SELECT {COLUMNS} FROM ledger_checkpoints WHERE tenant_id = $1 AND ($2::bigint IS NULL OR tree_size < $2)"
          " ORDER BY tree_size DESC LIMIT $3")
GET = f"SELECT {COLUMNS} FROM ledger_checkpoints WHERE tenant_id = $1 AND tree_size = $2"
LIST_AFTER = (f"SELECT {COLUMNS} FROM ledger_checkpoints WHERE tenant_id = $1 AND tree_size > $2"
              " ORDER BY tree_size LIMIT $3")
PAIR = f"SELECT {COLUMNS} FROM ledger_checkpoints WHERE tenant_id = $1 AND tree_size = ANY($2::bigint[])"

VERDICTS = 65536  # rows whose verdict is remembered (and, for bad ones, reported once), per process
_verdicts: OrderedDict[bytes, tuple[str | None, tuple[int, bytes] | None]] = OrderedDict()
_reported: set[bytes] = set()


def as_dict(row: asyncpg.Record) -> dict[str, Any]:
    return {"tenant": row["tenant_id"], "tree_size": row["tree_size"], "root_hash": row["root_hash"],
            "issued_at": format_time(row["issued_at"]), "key_id": row["key_id"], "jws": row["jws"]}


def signed_head(payload: dict[str, Any], tenant: str) -> tuple[int, bytes] | None:
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
    head = signed_head(payload, row["tenant_id"])
    expected = {"tenant": row["tenant_id"], "tree_size": row["tree_size"], "root_hash": row["root_hash"],
                "issued_at": format_time(row["issued_at"])}
    if payload != expected or type(payload.get("tree_size")) is not int or kid != row["key_id"]:
        return (f"the row does not say what its JWS signs (tenant {payload.get('tenant')!r}, tree_size "
                f"{payload.get('tree_size')!r}, root_hash {payload.get('root_hash')!r}, kid {kid!r})"), head
    return None, head


class Judge:
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


async def newest_valid(conn: asyncpg.Connection, tenant: str, judge: Judge, below: int | None = None,
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
    async with connection(conn) as c:
        if proof is None:
            row = await c.fetchrow(NEWEST, tenant, None, 1)
        else:
            row, _ = await newest_valid(c, tenant, Judge(proof))
    return as_dict(row) if row else None


async def get(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, tree_size: int, proof: Proof | None = None,
              ) -> dict[str, Any] | None:
    """The checkpoint of `tree_size`, None when there is none or (with `proof`) its row does not verify."""
    row = await conn.fetchrow(GET, tenant, tree_size)
    return as_dict(row) if row and (proof is None or Judge(proof).valid(row)) else None


async def list_after(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, after_size: int, limit: int,
                     proof: Proof | None = None) -> list[dict[str, Any]]:
    """Checkpoints with tree_size > after_size, oldest first (keyset paging); with `proof`, only rows
    that verify (a page is filled past the others)."""
    if proof is None:
        return [as_dict(r) for r in await conn.fetch(LIST_AFTER, tenant, after_size, limit)]
    judge, out = Judge(proof), []
    async with connection(conn) as c:
        while len(out) < limit:
            want = limit - len(out)
            rows = await c.fetch(LIST_AFTER, tenant, after_size, want)
            out += [as_dict(r) for r in rows if judge.valid(r)]
            if len(rows) < want:
                break
            after_size = rows[-1]["tree_size"]
    return out
