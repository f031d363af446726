"""Reclassifications that take effect at a later date (docs/legal-model.md): the worker applies
each one once its date has come, every BASIS_CHANGE_INTERVAL_SECONDS.

purpose_basis_changes is the truth and stays append-only; applying a change is idempotent (the
purpose takes the basis of its latest change in force, if it differs), so several workers, a
restart or a missed round never apply anything twice or out of order. A change whose purpose a
collection point has meanwhile made a condition of its service, in a category that may not be one
(PIPA Art. 16(3), 22(5)), is not applied and is logged at ERROR on every round until someone acts.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from app.catalog.legal import MAY_BE_CONDITION
from app.core.periodic import every
from app.core.settings import Settings

log = logging.getLogger("consent_ledger.catalog")

_MAY = ", ".join(f"'{c}'" for c in sorted(MAY_BE_CONDITION))
# The latest change in force per purpose; applied where the purpose is not already so.
APPLY = f"""
WITH due AS (
    SELECT DISTINCT ON (c.purpose_id) c.purpose_id, c.legal_basis, c.category
    FROM purpose_basis_changes c WHERE c.effective_from <= now()
    ORDER BY c.purpose_id, c.effective_from DESC, c.created_at DESC
), blocked AS (
    SELECT due.purpose_id FROM due
    WHERE NOT (COALESCE(due.category, '') = ANY (ARRAY[{_MAY}]::text[]))
      AND EXISTS (SELECT 1 FROM collection_point_purposes cpp
                  WHERE cpp.purpose_id = due.purpose_id AND cpp.condition_of_service)
)
UPDATE purposes p SET legal_basis = due.legal_basis, category = due.category, updated_at = now(),
       kind = CASE WHEN due.legal_basis <> 'consent' THEN 'disclosed'
                   WHEN due.category = 'collection_use' THEN 'optional' ELSE due.category END
FROM due
WHERE p.id = due.purpose_id AND p.id NOT IN (SELECT purpose_id FROM blocked)
  AND (p.legal_basis, p.category) IS DISTINCT FROM (due.legal_basis, due.category)
RETURNING p.tenant_id, p.key, p.legal_basis, p.category
"""
BLOCKED = """
SELECT p.tenant_id, p.key, due.legal_basis, due.category FROM (
    SELECT DISTINCT ON (c.purpose_id) c.purpose_id, c.legal_basis, c.category
    FROM purpose_basis_changes c WHERE c.effective_from <= now()
    ORDER BY c.purpose_id, c.effective_from DESC, c.created_at DESC) due
JOIN purposes p ON p.id = due.purpose_id
WHERE (p.legal_basis, p.category) IS DISTINCT FROM (due.legal_basis, due.category)
"""


async def apply_due(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Apply every reclassification whose date has come; returns the purposes changed."""
    async with conn.transaction():
        changed = await conn.fetch(APPLY)
        for row in await conn.fetch(BLOCKED):
            log.error("the reclassification of purpose %r (tenant %r) to %s%s is due but not applied: a collection "
                      "point makes it a condition of its service, which that category may not be (PIPA Art. "
                      "16(3), 22(5)); remove the mark or reclassify again", row["key"], row["tenant_id"],
                      row["legal_basis"], f" ({row['category']})" if row["category"] else "")
    for row in changed:
        log.info("purpose %r of tenant %r is now %s%s, as scheduled", row["key"], row["tenant_id"],
                 row["legal_basis"], f" ({row['category']})" if row["category"] else "")
    return changed


async def run_basis_changes(settings: Settings, stop: asyncio.Event) -> None:
    """Every BASIS_CHANGE_INTERVAL_SECONDS until `stop`; an outage is logged and retried."""
    await every(settings, stop, settings.basis_change_interval_seconds, name="consent-ledger-scheduler",
                job=apply_due, log=log, what="scheduled reclassifications")
