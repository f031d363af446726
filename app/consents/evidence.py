"""Raw evidence (IP, user agent, guardian verification) kept apart from the chain, and its purge.

The chain holds only a keyed commitment to each row (docs/proof.md), so destroying the raw values
when their retention ends (PIPA Art. 21) leaves every hash, seal and checkpoint intact; while a row
exists, verify recomputes its commitment, so a forged raw value is caught.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from app.core.errors import NotFound

LIST = """
SELECT sub.id AS subject_pk, ev.id, ev.created_at, ev.ip, ev.user_agent, ev.guardian, ev.commitment, ev.purged_at
FROM subjects sub LEFT JOIN consent_evidence ev ON ev.subject_id = sub.id
WHERE sub.tenant_id = $1 AND sub.external_id = $2
ORDER BY ev.created_at, ev.id
"""


async def for_subject(pool: asyncpg.Pool, tenant: str, external_id: str) -> dict[str, Any]:
    rows = await pool.fetch(LIST, tenant, external_id)
    if not rows:
        raise NotFound(f"no subject {external_id!r}")
    return {"subject_id": external_id, "items": [
        {"id": r["id"], "recorded_at": r["created_at"], "ip": r["ip"], "user_agent": r["user_agent"],
         "guardian": r["guardian"], "commitment": r["commitment"], "purged_at": r["purged_at"]}
        for r in rows if r["id"] is not None]}


async def purge(conn: asyncpg.Connection, before: datetime, by: str) -> int:
    """Destroy raw evidence recorded before `before` (a SECURITY DEFINER function: the runtime role
    may not update evidence rows itself); each pass is recorded in evidence_purges."""
    return await conn.fetchval("SELECT ledger_purge_evidence($1, $2)", before, by)
