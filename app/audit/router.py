"""Audit routes (issue 11): search and export the tenant's consent events (scope audit:read)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from app.audit import search
from app.audit.filters import EventFilter
from app.audit.streams import ReleasingResponse, Slots
from app.auth.deps import AuditRead
from app.catalog.schemas import Category, Channel, LegalBasis
from app.consents.schemas import Action, ActorType, Method
from app.core.db import AuditReader
from app.core.errors import problem_responses
from app.core.responses import json_response
from app.core.schemas import Key, UtcDatetime

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=problem_responses(401, 403, 422))
EXPORT_BUSY = problem_responses(429)
Text = Annotated[str | None, Query(min_length=1, max_length=255)]
EXPORTING = Slots(4, "exports")  # at once in one process: a few slow readers never hold the whole pool


def event_filter(
    recorded_from: Annotated[UtcDatetime | None, Query(description="recorded at or after (ISO 8601 with offset)")] = None,
    recorded_to: Annotated[UtcDatetime | None, Query(description="recorded before")] = None,
    subject_id: Text = None, purpose: Key | None = None, category: Category | None = None,
    legal_basis: LegalBasis | None = None, action: Action | None = None, channel: Channel | None = None,
    collection_point: Key | None = None, notice_key: Key | None = None,
    notice_version: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    actor_type: ActorType | None = None, method: Method | None = None,
) -> EventFilter:
    f = EventFilter(recorded_from=recorded_from, recorded_to=recorded_to, subject_id=subject_id, purpose=purpose,
                    category=category, legal_basis=legal_basis, action=action, channel=channel,
                    collection_point=collection_point, notice_key=notice_key, notice_version=notice_version,
                    actor_type=actor_type, method=method)
    f.check()
    return f


Filter = Annotated[EventFilter, Depends(event_filter)]


@router.get("/events", operation_id="audit-events")
async def search_events(
    principal: AuditRead, pool: AuditReader, f: Filter,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    counts: Annotated[bool, Query(description="Also count every matching event (slower on large ranges)")] = False,
):
    """The tenant's events, oldest first, each exactly as hashed (its document and hash), filtered by
    recorded time, member id, purpose, category, legal basis, action, channel, collection point,
    notice, actor type and method."""
    return json_response(await search.page(pool, principal.tenant, f, cursor=cursor, limit=limit, counts=counts))


@router.get("/export", operation_id="audit-export",
            responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}},
                             "description": "The matching events, streamed"}, **EXPORT_BUSY})
async def export_events(
    request: Request, principal: AuditRead, pool: AuditReader, f: Filter,
    format: Annotated[Literal["ndjson", "csv"], Query(description="NDJSON: one event per line as hashed")] = "ndjson",
    headers: Annotated[Literal["en", "ko"], Query(description="CSV column names")] = "en",
    bom: Annotated[bool, Query(description="CSV: start with a UTF-8 BOM (for Excel)")] = False,
):
    """Every matching event, streamed from one consistent snapshot (memory flat, whatever the count);
    gzip-compressed when the request accepts it (Accept-Encoding: gzip)."""
    gzip = "gzip" in request.headers.get("accept-encoding", "").lower()
    media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson"
    response_headers = {"Content-Disposition": f'attachment; filename="{principal.tenant}-events.{format}"'}
    if gzip:
        response_headers["Content-Encoding"] = "gzip"
    conn, release = await EXPORTING.hold(pool)  # before the first byte: busy is a 429, a full pool a 503
    body = search.export(conn, pool, principal.tenant, f, fmt=format, korean=headers == "ko", bom=bom, gzip=gzip,
                         release=release)
    return ReleasingResponse(body, release, media_type=media, headers=response_headers)
