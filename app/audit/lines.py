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

from app.audit import streams

TIME_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'
SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
QUEUED_CHUNKS = 8  # COPY output waiting for the client; the COPY pauses beyond it (memory stays flat)
# One COPY is one statement: DB_STATEMENT_TIMEOUT_SECONDS (meant for a request's statements) would cut
# an export of millions of events, so the export's transaction lifts it and bounds the COPY by this
# instead (a billion events at 100,000/s take under 3 hours).
EXPORT_TIMEOUT_SECONDS = 6 * 3600


# A member's value is a list of pieces: Lit (JSON text as is) or Sql (an expression printing JSON
# text). concat() takes every piece of a line as one argument, literals merged, so a NOT NULL column
# of a known shape is printed between two quote literals with no intermediate string at all.
class Lit(str):
    pass


class Sql(str):
    pass


Piece = Lit | Sql


def _safe(expr: str, nullable: bool = True) -> list[Piece]:
    """A value that holds no character JSON escapes, quoted without to_json (which costs about 0.5 us
    a call): what the table's CHECK constraints keep to [a-z0-9_] (action, status, method, actor_type;
    hash and prev_hash are lowercase hex by ck_consent_events_hash_shape, and version 1 rows, older
    than that check, carry hex SHA-256 too), a uuid, a printed instant."""
    if nullable:
        return [Sql(f"coalesce('\"' || {expr} || '\"', 'null')")]
    return [Lit('"'), Sql(expr), Lit('"')]


def _text(expr: str, nullable: bool = True) -> list[Piece]:
    return [Sql(f"coalesce(to_json({expr})::text, 'null')" if nullable else f"to_json({expr})")]


def _printed_time(expr: str) -> str:
    """An instant as chain.format_time prints it (NULL stays NULL)."""
    return f"to_char({expr} AT TIME ZONE 'UTC', '{TIME_FORMAT}')"


def _time(expr: str, nullable: bool = True) -> list[Piece]:
    return _safe(_printed_time(expr), nullable)


def _object(members: list[tuple[str, list[Piece]]]) -> list[Piece]:
    out: list[Piece] = []
    for i, (name, value) in enumerate(members):
        out += [Lit(f'{"{" if i == 0 else ","}"{name}":'), *value]
    return [*out, Lit("}")]


def _concat(pieces: list[Piece]) -> str:
    """concat() of the pieces, adjacent literals merged: one pass builds the line (a chain of ||
    would copy it once per piece)."""
    args: list[str] = []
    for piece in pieces:
        if isinstance(piece, Lit) and args and isinstance(args[-1], Lit):
            args[-1] = Lit(args[-1] + piece)
        else:
            args.append(piece)
    return "concat(" + ", ".join(_sql_literal(a) if isinstance(a, Lit) else a for a in args) + ")"


def _sql_literal(text: str) -> str:
    return "E'" + text.replace("\\", "\\\\").replace("'", "''").replace("\n", "\\n") + "'"


def _nullable_object(present: str, members: list[tuple[str, list[Piece]]]) -> list[Piece]:
    return [Sql(f"CASE WHEN {present} IS NULL THEN 'null' ELSE {_concat(_object(members))} END")]


NOTICE = _nullable_object("e.notice_id", [
    ("id", _safe("e.notice_id::text", nullable=False)), ("key", _text("e.notice_key")),
    ("version", _text("e.notice_version")), ("sha256", _text("e.notice_sha256")),
    ("superseded_at", _time("e.notice_superseded_at"))])
EVIDENCE = _nullable_object("e.evidence_id", [
    ("id", _safe("e.evidence_id::text", nullable=False)), ("commitment", _text("e.evidence_commitment"))])
# chain.document's members, in its order, then the hash (queries.event_json). NOT NULL columns
# (tenant_id, seq, version, action, status, method, actor_type, occurred_at, recorded_at,
# request_id, hash, chain_version, purpose_key; subjects.external_id) print without coalesce.
MEMBERS: list[tuple[str, list[Piece]]] = [
    ("chain_version", [Sql("e.chain_version")]), ("tenant", _text("e.tenant_id", nullable=False)),
    ("subject_id", _text("s.external_id", nullable=False)), ("id", _safe("e.id", nullable=False)),
    ("seq", [Sql("e.seq")]), ("request_id", _safe("e.request_id", nullable=False)),
    ("purpose", _text("e.purpose_key", nullable=False)), ("version", [Sql("e.version")]),
    ("action", _safe("e.action", nullable=False)), ("status", _safe("e.status", nullable=False)),
    ("previous_status", _text("e.previous_status")), ("collection_point", _text("e.collection_point_key")),
    ("notice", NOTICE), ("disclosure_hash", _text("e.disclosure_hash")),
    ("method", _safe("e.method", nullable=False)),
    ("actor", _object([("type", _safe("e.actor_type", nullable=False)), ("ref", _text("e.actor_ref"))])),
    ("evidence", EVIDENCE), ("occurred_at", _time("e.occurred_at", nullable=False)),
    ("recorded_at", _time("e.recorded_at", nullable=False)), ("reason", _text("e.reason")),
    ("prev_hash", _safe("e.prev_hash")), ("hash", _safe("e.hash", nullable=False)),
]
DOCUMENT = _concat(_object(MEMBERS))  # one printed event: a search page's item
NDJSON_LINE = _concat([*_object(MEMBERS), Lit("\n")])


def _csv_field(expr: str) -> str:
    return (f"coalesce(CASE WHEN {expr} ~ '[\",\\r\\n]' THEN '\"' || replace({expr}, '\"', '\"\"') || '\"' "
            f"ELSE {expr} END, '')")


def _csv_notice(column: str) -> str:
    return _csv_field(f"CASE WHEN e.notice_id IS NOT NULL THEN e.{column} END")


# the columns of search.COLUMNS, in order (a test holds the two lists together)
CSV_FIELDS = (
    f"coalesce({_printed_time('e.recorded_at')}, '')", f"coalesce({_printed_time('e.occurred_at')}, '')",
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
        self.rows = 0

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
        self.rows += len(out)
        return b"".join(out)


async def settle(conn: asyncpg.Connection, in_index_order: bool) -> None:
    """The export transaction's settings on `conn`, in one round trip."""
    sql = "SET LOCAL statement_timeout = 0"
    if in_index_order:
        # Without this the planner sorts a large export: it scans the table, sorts every printed
        # line (spilling gigabytes to temporary files before the first byte) and merges parallel
        # workers' sorted streams, as it costs the join to subjects along the time index dearly.
        # Walking the (tenant_id, recorded_at, id) index in order streams from the first row and
        # measured faster at 10 million events (bench/README.md "Issue 11"); so does one backend
        # against parallel workers whose Gather Merge costs more than the printing they share
        # (app/audit/slices.py shares it out by time instead).
        sql += "; SET LOCAL enable_sort = off; SET LOCAL max_parallel_workers_per_gather = 0"
    await conn.execute(sql)


_COPYING: set[asyncpg.Connection] = set()  # connections inside copy()


async def copy(conn: asyncpg.Connection, query: str, args: list[Any], sink: Any) -> None:
    """`query`'s COPY in binary format into `sink`. One cut short (the sink raised, or the task was
    cancelled) takes its connection with it: asyncpg asks the server to cancel and then treats the
    connection as free while the server may still be sending COPY data, so the connection is
    terminated (the pool replaces it). An error the server reported leaves a sound connection."""
    _COPYING.add(conn)
    try:
        await conn.copy_from_query(query, *args, format="binary", output=sink, timeout=EXPORT_TIMEOUT_SECONDS)
    except asyncpg.PostgresError:
        raise
    except BaseException:
        drop(conn)
        raise
    finally:
        _COPYING.discard(conn)


def drop(conn: asyncpg.Connection) -> None:
    """Terminate `conn` (a pool's proxy of a connection terminated already refuses every call)."""
    try:
        conn.terminate()
    except asyncpg.InterfaceError:
        pass


def cut(conn: asyncpg.Connection) -> None:
    """Terminate `conn` if a COPY is running on it (before cancelling the task that runs it)."""
    if conn in _COPYING:
        drop(conn)


async def end(conn: asyncpg.Connection, transaction: Any) -> None:
    """Roll back an export's read-only transaction, unless its connection went with a cut COPY; a
    connection that cannot roll back cleanly goes too (the pool replaces it)."""
    try:
        await transaction.rollback()
    except Exception:  # noqa: BLE001 - dropped already, or not rolled back cleanly: the connection goes
        drop(conn)


async def stream(conn: asyncpg.Connection, query: str, args: list[Any], *,
                 in_index_order: bool = False) -> AsyncIterator[bytes]:
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
                await streams.reader_took(room)

    async def run() -> None:
        try:
            await copy(conn, query, args, sink)
        finally:
            queue.put_nowait(None)

    await settle(conn, in_index_order)
    task = asyncio.create_task(run())
    try:
        while (chunk := await queue.get()) is not None:
            room.set()
            yield chunk
        await task  # its error, if it failed
    finally:
        if not task.done():
            cut(conn)
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
