"""GET /v1/audit/events and GET /v1/audit/export: the tenant's events by recorded time, filtered.

Search pages with a keyset on (recorded_at, id), on the index (tenant_id, recorded_at, id). The
export streams the same rows from COPY inside one repeatable-read, read-only transaction (one
consistent snapshot, memory flat whatever the count), as NDJSON (each line the event exactly as
hashed: its document and hash) or CSV (a BOM and Korean headers on request, for Excel), printed by
PostgreSQL (app/audit/lines.py), gzip-compressed when the client accepts it. A search page's items
are printed by the same SQL (bench/README.md, "Issue 11": Python printing was most of the
service's own time per page).
"""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import anyio
import asyncpg
import orjson

from app.audit import lines, slices
from app.audit.filters import EventFilter, where
from app.core.pagination import decode_cursor, encode_cursor

# zlib level 1: about 120,000 NDJSON events/s of one core against 57,000 at level 6 (the default),
# for a file about 16 % larger (bench/README.md, "Issue 11"): at 6 the compression alone capped a
# gzip export below the 100,000 events/s target.
GZIP_LEVEL = 1
COMPRESS_APART = 32 << 10  # a chunk this large is compressed in a thread, off the event loop
# CSV columns: (English header, Korean header, the event document's member or a path into it)
COLUMNS = (
    ("recorded_at", "기록시각", ("recorded_at",)), ("occurred_at", "발생시각", ("occurred_at",)),
    ("subject_id", "회원ID", ("subject_id",)), ("seq", "순번", ("seq",)), ("purpose", "목적", ("purpose",)),
    ("action", "행위", ("action",)), ("status", "상태", ("status",)),
    ("previous_status", "이전상태", ("previous_status",)), ("collection_point", "수집경로", ("collection_point",)),
    ("notice_key", "고지문", ("notice", "key")), ("notice_version", "고지문버전", ("notice", "version")),
    ("notice_sha256", "고지문해시", ("notice", "sha256")), ("disclosure_hash", "고지내용해시", ("disclosure_hash",)),
    ("method", "방법", ("method",)), ("actor_type", "행위자", ("actor", "type")),
    ("event_id", "이벤트ID", ("id",)), ("prev_hash", "이전해시", ("prev_hash",)), ("hash", "해시", ("hash",)),
)


def _cursor(parts: list[str]) -> tuple[datetime, uuid.UUID]:
    at, event_id = parts
    return datetime.fromisoformat(at), uuid.UUID(event_id)


async def page(pool: asyncpg.Pool, tenant: str, f: EventFilter, *, cursor: str | None, limit: int,
               counts: bool) -> dict[str, Any]:
    f.check()
    after = decode_cursor(cursor, _cursor) if cursor else None
    condition, args = where(f, tenant, after)
    rows = await pool.fetch(f"SELECT {lines.DOCUMENT} AS document, e.recorded_at, e.id {lines.FROM} "
                            f"WHERE {condition} ORDER BY e.recorded_at, e.id LIMIT {limit + 1}", *args)
    more = len(rows) > limit
    rows = rows[:limit]
    result: dict[str, Any] = {  # each item printed by PostgreSQL, as the export's lines (lines.py)
        "items": [orjson.Fragment(r["document"]) for r in rows],
        "next_cursor": encode_cursor(rows[-1]["recorded_at"].isoformat(), rows[-1]["id"]) if more else None,
        "count": None,
    }
    if counts:
        condition, args = where(f, tenant)
        result["count"] = await pool.fetchval(
            f"SELECT count(*) FROM consent_events e JOIN subjects s ON s.id = e.subject_id WHERE {condition}", *args)
    return result


def csv_header(korean: bool, bom: bool) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow([ko if korean else en for en, ko, _ in COLUMNS])
    return (b"\xef\xbb\xbf" if bom else b"") + out.getvalue().encode("utf-8")


async def export(conn: asyncpg.Connection, pool: asyncpg.Pool, tenant: str, f: EventFilter, *, fmt: str,
                 korean: bool, bom: bool, gzip: bool, release: Callable[[], Awaitable[None]]) -> AsyncIterator[bytes]:
    """The matching events, oldest first, as lines PostgreSQL prints (app/audit/lines.py), from one
    snapshot: COPY statements inside a repeatable-read, read-only transaction on `conn` (and, for a
    large export, on one more connection of `pool` sharing its snapshot: app/audit/slices.py), which
    `release` gives back (with the caller's slot) once the last line is out, before the gzip trailer
    (the response gives it back too, however it ends: the second call does nothing)."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31) if gzip else None

    async def out(data: bytes) -> bytes:
        if compressor is None:
            return data
        if len(data) < COMPRESS_APART:
            return compressor.compress(data)
        # zlib lets go of the GIL: the COPYs' sinks keep draining their sockets meanwhile
        return await asyncio.to_thread(compressor.compress, data)

    transaction = conn.transaction(isolation="repeatable_read", readonly=True)
    try:
        if fmt == "csv":
            yield await out(csv_header(korean, bom))
        condition, args = where(f, tenant)
        # read-only: never committed; rolled back at the end (a connection whose COPY was cut is
        # closed by then, and the pool replaces it)
        await transaction.start()
        async for data in slices.stream(conn, pool, tenant, f, fmt, condition, args):
            if chunk := await out(data):
                yield chunk
    finally:
        with anyio.CancelScope(shield=True):  # a client gone cancels every await here otherwise
            await lines.end(conn, transaction)
            await release()
    if compressor:
        yield compressor.flush()
