"""The filters of a tenant-wide search or export of consent events, as one SQL WHERE.

Purpose properties (category, legal basis, channel) are the purposes' now; an event names its
purpose by id, so they select the purposes first. Times are the server's `recorded_at`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from app.core.conditions import Conditions
from app.core.errors import InvalidRequest


@dataclass(frozen=True)
class EventFilter:
    recorded_from: datetime | None = None
    recorded_to: datetime | None = None
    subject_id: str | None = None
    purpose: str | None = None
    category: str | None = None
    legal_basis: str | None = None
    action: str | None = None
    channel: str | None = None
    collection_point: str | None = None
    notice_key: str | None = None
    notice_version: str | None = None
    actor_type: str | None = None
    method: str | None = None

    def check(self) -> None:
        if self.recorded_from and self.recorded_to and self.recorded_from >= self.recorded_to:
            raise InvalidRequest("the time range is empty", errors=[
                {"field": "query.recorded_to", "reason": "must be later than recorded_from"}])

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def where(f: EventFilter, tenant: str, after: tuple[datetime, uuid.UUID] | None = None) -> tuple[str, list[Any]]:
    """(SQL condition on consent_events `e` and subjects `s`, its arguments)."""
    where = Conditions("e.tenant_id = $1", tenant)
    if f.recorded_from is not None:
        where.add(f"e.recorded_at >= {where.arg(f.recorded_from)}")
    if f.recorded_to is not None:
        where.add(f"e.recorded_at < {where.arg(f.recorded_to)}")
    where.equal("s.external_id", f.subject_id)
    for column, value in (("purpose_key", f.purpose), ("action", f.action),
                          ("collection_point_key", f.collection_point), ("notice_key", f.notice_key),
                          ("notice_version", f.notice_version), ("actor_type", f.actor_type), ("method", f.method)):
        where.equal(f"e.{column}", value)
    purpose_conds = [f"p.{column} = {where.arg(value)}" for column, value in
                     (("category", f.category), ("legal_basis", f.legal_basis), ("channel", f.channel))
                     if value is not None]
    if purpose_conds:
        where.add(f"e.purpose_id IN (SELECT p.id FROM purposes p WHERE p.tenant_id = $1 AND "
                  f"{' AND '.join(purpose_conds)})")
    if after is not None:
        where.add(f"(e.recorded_at, e.id) > ({where.arg(after[0])}, {where.arg(after[1])})")
    return where.sql, where.args
