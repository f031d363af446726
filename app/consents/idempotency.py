"""Idempotency-Key: the first result is stored in the request's own transaction (invariant 6).

A concurrent duplicate blocks on the key row until the first transaction ends, then either sees
the stored result (committed) or takes over (rolled back). Failed requests store nothing, so a
retry re-runs them and meets the same error. A key lasts IDEMPOTENCY_KEY_TTL_SECONDS after its
first use, then behaves as unused; the purge (app/core/retention.py) deletes such rows later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from pydantic import BaseModel

from app.core.errors import IdempotencyKeyReused, InvalidRequest
from app.core.hashing import canonical_json, sha256_hex
from app.core.settings import Settings

MAX_KEY_LENGTH = 255
DEFAULT_TTL_SECONDS = Settings.idempotency_key_ttl_seconds

# A key past its time is taken over in place, as if never used: the row lock of the upsert makes a
# concurrent duplicate wait for this transaction exactly as with a fresh key.
CLAIM = """
INSERT INTO idempotency_keys (tenant_id, key, request_hash, response) VALUES ($1, $2, $3, '{}'::jsonb)
ON CONFLICT (tenant_id, key) DO UPDATE
    SET request_hash = EXCLUDED.request_hash, status_code = NULL, response = '{}'::jsonb, created_at = now()
    WHERE idempotency_keys.created_at < now() - make_interval(secs => $4)
RETURNING true
"""


@dataclass
class Replay:
    status_code: int
    body: dict[str, Any]


def fingerprint(method: str, path: str, body: Any) -> str:
    return sha256_hex(canonical_json({"method": method, "path": path, "body": body}))


async def claim(conn: asyncpg.Connection, tenant: str, key: str | None, path: str, body: BaseModel, *,
                ttl_seconds: float = DEFAULT_TTL_SECONDS) -> Replay | None:
    """Reserve the key for this transaction, or return the stored first result (while it lasts)."""
    if key is None:
        return None
    request_hash = fingerprint("POST", path, body.model_dump(mode="json"))
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest("the Idempotency-Key header is not valid", errors=[
            {"field": "header.Idempotency-Key", "reason": f"must be 1-{MAX_KEY_LENGTH} characters"}])
    inserted = await conn.fetchval(CLAIM, tenant, key, request_hash, ttl_seconds)
    if inserted:
        return None
    row = await conn.fetchrow(
        "SELECT request_hash, status_code, response FROM idempotency_keys WHERE tenant_id = $1 AND key = $2",
        tenant, key,
    )
    if row["request_hash"] != request_hash:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was first used with a different request; use a new key for a new request",
            errors=[{"field": "header.Idempotency-Key", "reason": "already used with another body or path"}],
        )
    return Replay(status_code=row["status_code"], body=row["response"])


async def store(conn: asyncpg.Connection, tenant: str, key: str | None, status_code: int, body: dict[str, Any]) -> None:
    if key is None:
        return
    await conn.execute(
        "UPDATE idempotency_keys SET status_code = $3, response = $4 WHERE tenant_id = $1 AND key = $2",
        tenant, key, status_code, body,
    )
