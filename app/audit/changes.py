"""GET /v1/audit/changes: the tenant's catalog history (alembic 0009), oldest first.

Every change to purposes, collection points and what they present, notices, recipients,
processors, webhook endpoints (never their secrets), the tenant and its settings: the row before
and after, who (the token's `sub`, or `db:<role> (<application>)` when made outside the service's
routes) and when. Keyset on (changed_at, id) over the index (tenant_id, changed_at, id).

changed_at is when the change's statement ran; a change becomes visible when its transaction
commits, which may be later: a client following the feed with `changed_from` should start again a
little before its last row (the service's statement timeout bounds the gap).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Query

from app.auth.deps import AuditRead
from app.core.conditions import Conditions
from app.core.db import AuditReader
from app.core.errors import InvalidRequest, problem_responses
from app.core.pagination import decode_cursor, encode_cursor
from app.core.responses import json_response
from app.core.schemas import UtcDatetime

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=problem_responses(401, 403, 422))

# "history": where a tenant's history starts (its catalog as it was before is not known)
Entity = Literal["tenants", "tenant_settings", "recipients", "processors", "purposes", "notices",
                 "collection_points", "collection_point_purposes", "webhook_endpoints", "history"]
Op = Literal["baseline", "insert", "update", "delete"]
Text = Annotated[str | None, Query(min_length=1, max_length=255)]

COLUMNS = "id, entity, entity_id, key, op, before, after, changed_by, db_role, changed_at, transaction_at"


def _cursor(parts: list[str]) -> tuple[datetime, int]:
    at, change_id = parts
    return datetime.fromisoformat(at), int(change_id)


async def page(pool: asyncpg.Pool, tenant: str, *, filters: dict[str, Any], changed_from: datetime | None,
               changed_to: datetime | None, cursor: str | None, limit: int) -> dict[str, Any]:
    where = Conditions("tenant_id = $1", tenant)
    for column, value in filters.items():
        where.equal(column, value)
    if changed_from is not None:
        where.add(f"changed_at >= {where.arg(changed_from)}")
    if changed_to is not None:
        where.add(f"changed_at < {where.arg(changed_to)}")
    if cursor:
        at, change_id = decode_cursor(cursor, _cursor)
        where.add(f"(changed_at, id) > ({where.arg(at)}, {where.arg(change_id)})")
    rows = await pool.fetch(f"SELECT {COLUMNS} FROM catalog_changes WHERE {where.sql} "
                            f"ORDER BY changed_at, id LIMIT {limit + 1}", *where.args)
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [dict(row) for row in rows],
        "next_cursor": encode_cursor(rows[-1]["changed_at"].isoformat(), rows[-1]["id"]) if more else None,
    }


@router.get("/changes", operation_id="audit-changes")
async def catalog_changes(
    principal: AuditRead, pool: AuditReader,
    entity: Annotated[Entity | None, Query(description="the table changed")] = None,
    key: Annotated[str | None, Query(min_length=1, max_length=255,
                                     description="the row's key (a purpose's, a notice's, a collection point's: "
                                                 "its presented purposes too)")] = None,
    entity_id: Text = None, changed_by: Text = None, op: Op | None = None,
    changed_from: Annotated[UtcDatetime | None, Query(description="at or after (ISO 8601 with offset)")] = None,
    changed_to: Annotated[UtcDatetime | None, Query(description="before")] = None,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
):
    """Every change to the tenant's catalog, notices, webhook endpoints and settings: what (the row
    before and after), who, when; `baseline` marks a row as it was when the history began."""
    if changed_from and changed_to and changed_from >= changed_to:
        raise InvalidRequest("the time range is empty",
                             errors=[{"field": "query.changed_to", "reason": "must be after changed_from"}])
    return json_response(await page(
        pool, principal.tenant, filters={"entity": entity, "key": key, "entity_id": entity_id,
                                         "changed_by": changed_by, "op": op},
        changed_from=changed_from, changed_to=changed_to, cursor=cursor, limit=limit))
