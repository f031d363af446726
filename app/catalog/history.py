"""The catalog as it was: rows read back from `catalog_changes` (written by the tables' own trigger,
alembic 0009), so "which wording did this form show at T" is answered from the catalog's history,
not from today's rows.

A row's state at T is its latest change made at or before T (none, or a delete: it did not exist);
"latest" by id: two changes of one row are serialised by its lock, so ids follow their commits. A
row that existed before the history began has a `baseline` change from the time it is known to be
as it is (the migration's note), and the tenant a `history` mark where its history starts; asked
about an earlier time, the answer is "not known", never a guess (409). The form is rendered by
today's code (build_form) from the rows as they were.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.deps import Principal
from app.catalog import schemas
from app.catalog.models import CollectionPoint, Notice, Purpose, Recipient
from app.catalog.service import build_form
from app.core.errors import Conflict, NotFound

_LATEST = """
SELECT DISTINCT ON (entity_id) entity_id, op, after
FROM catalog_changes
WHERE tenant_id = :tenant AND entity = :entity AND changed_at <= :at AND {which}
ORDER BY entity_id, id DESC
"""
_STARTS = "SELECT max(changed_at) FROM catalog_changes WHERE tenant_id = :tenant AND entity = 'history'"
# The earliest change of rows that existed at T but whose history starts later (a baseline).
_UNKNOWN = """
SELECT min(changed_at) FROM catalog_changes
WHERE tenant_id = :tenant AND entity = :entity AND {which} AND op = 'baseline' AND changed_at > :at
  AND (after->>'created_at')::timestamptz <= :at
"""


async def _rows(session: AsyncSession, tenant: str, entity: str, at: datetime, which: str,
                **params: Any) -> dict[str, dict[str, Any]]:
    """entity_id -> the row as it was at `at`, for the rows of `entity` that `which` selects."""
    found = await session.execute(text(_LATEST.format(which=which)),
                                  {"tenant": tenant, "entity": entity, "at": at, **params})
    return {row.entity_id: row.after for row in found if row.op != "delete"}


async def _unknown(session: AsyncSession, tenant: str, entity: str, at: datetime, which: str,
                   what: str, **params: Any) -> None:
    """409 when a row `which` selects existed at `at` but its history starts only later."""
    since = await session.scalar(text(_UNKNOWN.format(which=which)),
                                 {"tenant": tenant, "entity": entity, "at": at, **params})
    if since is not None:
        raise Conflict(f"the catalog's history of {what} starts at {since.isoformat()}, when it was first "
                       f"recorded as it is; what it was at {at.isoformat()} is not known",
                       errors=[{"field": "query.as_of", "reason": f"before {since.isoformat()}"}])


def _ids(values: Iterable[Any]) -> list[str]:
    return sorted({str(v) for v in values})


async def form_at(session: AsyncSession, principal: Principal, key: str, at: datetime) -> schemas.Form:
    """Exactly what `GET /v1/collection-points/{key}/form` answered at `at`."""
    tenant = principal.tenant
    points = await _rows(session, tenant, "collection_points", at, "key = :key", key=key)
    if not points:
        await _unknown(session, tenant, "collection_points", at, "key = :key", f"collection point {key!r}", key=key)
        starts = await session.scalar(text(_STARTS), {"tenant": tenant})
        if starts is not None and at < starts:
            raise Conflict(f"the catalog's history starts at {starts.isoformat()}: whether collection point {key!r} "
                           f"existed at {at.isoformat()} is not known",
                           errors=[{"field": "query.as_of", "reason": f"before {starts.isoformat()}"}])
        raise NotFound(f"no collection point with key {key!r} at {at.isoformat()}")
    point = CollectionPoint.model_validate(next(iter(points.values())))
    links = sorted((await _rows(session, tenant, "collection_point_purposes", at, "starts_with(entity_id, :point)",
                                point=f"{point.id}/")).values(), key=lambda row: row["position"])
    wanted = _ids(row["purpose_id"] for row in links)
    purposes = await _rows(session, tenant, "purposes", at, "entity_id = ANY(:ids)", ids=wanted)
    if len(purposes) < len(wanted):
        await _unknown(session, tenant, "purposes", at, "entity_id = ANY(:ids)", "a presented purpose", ids=wanted)
        raise _incomplete("a purpose the point presented", at)
    presented = [(p, bool(row["condition_of_service"])) for row in links  # every one is there (just checked)
                 if (p := Purpose.model_validate(purposes[row["purpose_id"]])).active]
    wanted = _ids(p.recipient_id for p, _ in presented if p.recipient_id)
    recipients = {uuid.UUID(i): Recipient.model_validate(row) for i, row in
                  (await _rows(session, tenant, "recipients", at, "entity_id = ANY(:ids)", ids=wanted)).items()}
    if len(recipients) < len(wanted):
        await _unknown(session, tenant, "recipients", at, "entity_id = ANY(:ids)", "a recipient", ids=wanted)
        raise _incomplete("the recipient of a presented purpose", at)
    notice = _in_force([Notice.model_validate(row) for row in
                        (await _rows(session, tenant, "notices", at, "key = :key", key=point.notice_key)).values()], at)
    if notice is None:
        raise Conflict(f"collection point {key!r} had no published notice {point.notice_key!r} in force at "
                       f"{at.isoformat()}: the form could not be shown then",
                       errors=[{"field": "query.as_of", "reason": "no notice in force"}])
    return build_form(point, notice, presented, recipients)


def _incomplete(what: str, at: datetime) -> Conflict:
    """The history lacks a row the form needs (removed behind the service's back): never a partial form."""
    return Conflict(f"the catalog's history has no record of {what} at {at.isoformat()}: the form as it was "
                    "cannot be rebuilt", errors=[{"field": "query.as_of", "reason": "the history is incomplete"}])


def _in_force(notices: list[Notice], at: datetime) -> Notice | None:
    """As app/catalog/service.py current_notice, at `at`: published by then, the latest effective."""
    live = [n for n in notices if n.published_at is not None and n.published_at <= at and n.effective_at <= at]
    return max(live, key=lambda n: (n.effective_at, n.published_at), default=None)
