"""The export's lines, printed by PostgreSQL and streamed by a binary COPY (issue 11 point 2).

Building each event's document in Python (a record decoded, a dict, orjson) capped an export at
about 20,000 events/s on a 2-core machine against a target of 100,000 (bench/README.md, "Issue
11"). So the statement prints each line itself, byte for byte what the Python path printed:

- NDJSON: `orjson.dumps(queries.event_json(...))`: the document's members in chain.document's
  order, compact, strings through `to_json` (which escapes exactly as orjson does: `"`, `\\`,
  \\b \\f \\n \\r \\t, other control characters as \\u00xx, the rest as UTF-8), instants as
  chain.format_time prints them (UTC, six fractional digits, `Z`);
- CSV: a row of csv.writer's default dialect (a field quoted only when it holds `,` `"` CR or LF,
  quotes doubled, CRLF at the end), the columns of search.COLUMNS.

COPY's binary format carries each line as one length-prefixed field with no escaping, so the
server only strips the framing. tests/audit/test_export_lines.py holds both printers to the
Python ones on awkward values.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

TIME_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'
SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
IDLE_SECONDS = 300.0  # a reader taking nothing this long loses the export
QUEUED_CHUNKS = 8  # COPY output waiting for the client; the COPY pauses beyond it (memory stays flat)
# One COPY is one statement: DB_STATEMENT_TIMEOUT_SECONDS (meant for a request's statements) would cut
# an export of millions of events, so the export's transaction lifts it and bounds the COPY by this
# instead (a billion events at 100,000/s take under 3 hours).
EXPORT_TIMEOUT_SECONDS = 6 * 3600


def _json_safe(expr: str) -> str:
    """A value the table's CHECK constraints keep to [a-z0-9_] (action, status, method, actor_type; hash and
    prev_hash are lowercase hex by ck_consent_events_hash_shape, and version 1 rows, older than that
    check, carry hex SHA-256 too): quoted without to_json, which costs about 0.5 us a call."""
    return f"coalesce('\"' || {expr} || '\"', 'null')"


def _json_text(expr: str) -> str:
    return f"coalesce(to_json({expr})::text, 'null')"


def _json_uuid(expr: str) -> str:
    return f"coalesce('\"' || {expr}::text || '\"', 'null')"


def _json_time(expr: str) -> str:
    return f"coalesce('\"' || to_char({expr} AT TIME ZONE 'UTC', '{TIME_FORMAT}') || '\"', 'null')"


def _members(pairs: list[tuple[str, str]], end: str = "'}'") -> str:
    """concat('{"a":', a, ',"b":', b, '}') for (name, SQL printing the JSON value) pairs: one
    concat() builds the line in one pass (a chain of || copies it once per piece)."""
    parts = []
    for i, (name, value) in enumerate(pairs):
        parts += [f"'{'{' if i == 0 else ','}\"{name}\":'", value]
    return f"concat({', '.join(parts)}, {end})"


NOTICE = _members([("id", _json_uuid("e.notice_id")), ("key", _json_text("e.notice_key")),
                   ("version", _json_text("e.notice_version")), ("sha256", _json_text("e.notice_sha256")),
                   ("superseded_at", _json_time("e.notice_superseded_at"))])
EVIDENCE = _members([("id", _json_uuid("e.evidence_id")), ("commitment", _json_text("e.evidence_commitment"))])
def _document(end: str) -> str:
    """chain.document's members, in its order, then the hash (queries.event_json)."""
    return _members([
    ("chain_version", "e.chain_version"), ("tenant", "to_json(e.tenant_id)"),
    ("subject_id", "to_json(s.external_id)"), ("id", "'\"' || e.id || '\"'"), ("seq", "e.seq"),
    ("request_id", "'\"' || e.request_id || '\"'"), ("purpose", "to_json(e.purpose_key)"),
    ("version", "e.version"), ("action", _json_safe("e.action")), ("status", _json_safe("e.status")),
    ("previous_status", _json_text("e.previous_status")),
    ("collection_point", _json_text("e.collection_point_key")),
    ("notice", f"CASE WHEN e.notice_id IS NULL THEN 'null' ELSE {NOTICE} END"),
    ("disclosure_hash", _json_text("e.disclosure_hash")), ("method", _json_safe("e.method")),
    ("actor", _members([("type", _json_safe("e.actor_type")), ("ref", _json_text("e.actor_ref"))])),
    ("evidence", f"CASE WHEN e.evidence_id IS NULL THEN 'null' ELSE {EVIDENCE} END"),
    ("occurred_at", _json_time("e.occurred_at")), ("recorded_at", _json_time("e.recorded_at")),
    ("reason", _json_text("e.reason")), ("prev_hash", _json_safe("e.prev_hash")), ("hash", _json_safe("e.hash")),
    ], end=end)


DOCUMENT = _document("'}'")  # one printed event: a search page's item
NDJSON_LINE = _document("E'}\\n'")


def _csv_field(expr: str) -> str:
    return (f"coalesce(CASE WHEN {expr} ~ '[\",\\r\\n]' THEN '\"' || replace({expr}, '\"', '\"\"') || '\"' "
            f"ELSE {expr} END, '')")


def _csv_notice(column: str) -> str:
    return _csv_field(f"CASE WHEN e.notice_id IS NOT NULL THEN e.{column} END")


# the columns of search.COLUMNS, in order (a test holds the two lists together)
CSV_FIELDS = (
    f"coalesce(to_char(e.recorded_at AT TIME ZONE 'UTC', '{TIME_FORMAT}'), '')",
    f"coalesce(to_char(e.occurred_at AT TIME ZONE 'UTC', '{TIME_FORMAT}'), '')",
    _csv_field("s.external_id"), "e.seq::text", _csv_field("e.purpose_key"), "coalesce(e.action, '')",
    "coalesce(e.status, '')", _csv_field("e.previous_status"), _csv_field("e.collection_point_key"),
    _csv_notice("notice_key"), _csv_notice("notice_version"), _csv_notice("notice_sha256"),
    _csv_field("e.disclosure_hash"), "coalesce(e.method, '')", "coalesce(e.actor_type, '')", "e.id::text",
    "coalesce(e.prev_hash, '')", "coalesce(e.hash, '')",
)
CSV_LINE = f"concat_ws(',', {', '.join(CSV_FIELDS)}) || E'\\r\\n'"

FROM = "FROM consent_events e JOIN subjects s ON s.id = e.subject_id"


def statement(fmt: str, condition: str) -> str:
    """The SELECT printing one line per matching event, oldest first."""
    line = CSV_LINE if fmt == "csv" else NDJSON_LINE
    return f"SELECT {line} {FROM} WHERE {condition} ORDER BY e.recorded_at, e.id"


class _Frames:
    """Reads COPY's binary framing (a header, then per row a field count and one length-prefixed
    field, then -1) and keeps the fields' bytes; a row cut between two chunks waits for the next."""

    def __init__(self) -> None:
        self.pending = b""
        self.started = False

    def feed(self, data: bytes) -> bytes:
        buf = self.pending + data if self.pending else data
        pos = 0
        if not self.started:  # signature, flags, header extension length, extension
            if len(buf) >= 11 and buf[:11] != SIGNATURE:
                raise RuntimeError("COPY did not answer in binary format")
            if len(buf) < 19 or len(buf) < (pos := 19 + struct.unpack_from(">I", buf, 15)[0]):
                self.pending = buf
                return b""
            self.started = True
        out = []
        end = len(buf)
        unpack = struct.unpack_from
        while pos + 2 <= end:
            count = unpack(">h", buf, pos)[0]
            if count == -1:  # the trailer
                pos = end
                break
            if pos + 6 > end:
                break
            length = unpack(">i", buf, pos + 2)[0]
            if pos + 6 + length > end:
                break
            out.append(buf[pos + 6:pos + 6 + length])
            pos += 6 + length
        self.pending = buf[pos:]
        return b"".join(out)


async def stream(conn: asyncpg.Connection, query: str, args: list[Any]) -> AsyncIterator[bytes]:
    """The lines `query` prints, as COPY hands them over (`conn` inside a transaction). Once QUEUED_CHUNKS wait for the consumer
    the COPY pauses (asyncpg stops reading the socket while its sink waits), so a slow client
    holds back the server instead of filling memory."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    room = asyncio.Event()
    room.set()
    frames = _Frames()

    async def sink(data: bytes) -> None:
        if lines := frames.feed(bytes(data)):
            queue.put_nowait(lines)
            if queue.qsize() >= QUEUED_CHUNKS:
                room.clear()
                try:  # a client that reads nothing does not hold a connection and a snapshot for hours
                    await asyncio.wait_for(room.wait(), IDLE_SECONDS)
                except TimeoutError:
                    raise TimeoutError(f"the client read nothing for {IDLE_SECONDS:.0f} s") from None

    async def copy() -> None:
        try:
            await conn.copy_from_query(query, *args, format="binary", output=sink, timeout=EXPORT_TIMEOUT_SECONDS)
        finally:
            queue.put_nowait(None)

    await conn.execute("SET LOCAL statement_timeout = 0")
    task = asyncio.create_task(copy())
    try:
        while (chunk := await queue.get()) is not None:
            room.set()
            yield chunk
        await task  # its error, if it failed
    finally:
        if not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
