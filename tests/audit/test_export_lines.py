"""The search's items and the export's lines are printed by PostgreSQL (app/audit/lines.py): they
must be byte for byte what the Python printers make of the same events (queries.event_json through
orjson; csv.writer's row of the COLUMNS), also for member ids and reasons full of quotes, commas,
line breaks, control characters and Hangul."""

from __future__ import annotations

import asyncio
import csv
import io
import struct
from urllib.parse import quote

import asyncpg
import orjson

from app.audit import lines, search, streams
from app.consents import queries
from app.core.responses import dumps_bytes
from tests.helpers import sign_up

AWKWARD = ['plain-1', 'a,"b"\nc', 'tab\there\r\x01\x1f\x7f', '회원 \\ \u2028 é']


def _value(doc, path):
    for key in path:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


def _csv(docs) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    for doc in docs:
        writer.writerow(["" if (v := _value(doc, path)) is None else v for _, _, path in search.COLUMNS])
    return out.getvalue().encode("utf-8")


async def test_postgres_prints_what_python_prints(client, auth, demo, db):
    write = auth(demo, "consents:write")
    for subject in AWKWARD:
        assert (await sign_up(client, write, quote(subject, safe=""), {"marketing-sms"})).status_code == 201
    withdrawn = await client.post(f"/v1/subjects/{quote(AWKWARD[1], safe='')}/consents/marketing-sms/withdraw",
                                  json={"reason": 'moved / "abroad",\n\t\x02 이사'}, headers=write)
    assert withdrawn.status_code == 200
    rows = await db.fetch("SELECT e.*, s.external_id AS subject_ref FROM consent_events e JOIN subjects s "
                          "ON s.id = e.subject_id WHERE e.tenant_id = $1 ORDER BY e.recorded_at, e.id", demo)
    printed = [queries.event_json(r, tenant=demo, subject_ref=r["subject_ref"]) for r in rows]  # the Python printer
    assert {e["subject_id"] for e in printed} == set(AWKWARD) and any(e["reason"] for e in printed)
    audit = auth(demo, "audit:read")

    page = await client.get("/v1/audit/events", params={"limit": 500}, headers=audit)
    assert page.content == dumps_bytes({"items": printed, "next_cursor": None, "count": None})
    ndjson = await client.get("/v1/audit/export", headers=audit)
    assert ndjson.content == b"".join(orjson.dumps(e) + b"\n" for e in printed)
    assert len(lines.CSV_FIELDS) == len(search.COLUMNS)  # the printers' column lists, held together
    as_csv = await client.get("/v1/audit/export", params={"format": "csv"}, headers=audit)
    assert as_csv.content == search.csv_header(False, False) + _csv(printed)


def test_binary_copy_frames_survive_any_cut():
    rows = [b'{"a":1}\n', b"", "회원,\"x\"\r\n".encode(), b"\x00\xff" * 40]
    payload = b"".join(struct.pack(">hi", 1, len(r)) + r for r in rows)
    stream = lines.SIGNATURE + struct.pack(">II", 0, 4) + b"ext!" + payload + struct.pack(">h", -1)
    for cut in (1, 2, 3, 7, 19, 64):
        frames = lines._Frames()
        out = b"".join(frames.feed(stream[i:i + cut]) for i in range(0, len(stream), cut))
        assert out == b"".join(rows) and frames.pending == b""


async def test_an_export_outlives_the_statement_timeout_and_a_slow_reader(runtime_db):
    """One COPY is one statement: the request's statement timeout must not cut a long export, and a
    consumer slower than the COPY holds it back without losing a line."""
    await runtime_db.execute("SET statement_timeout = '50ms'")
    query = "SELECT n::text || E'\\n' FROM generate_series(1, 20000) n, pg_sleep(0.2)"
    got = []
    async with runtime_db.transaction(readonly=True):
        async for chunk in lines.stream(runtime_db, query, []):
            got.append(chunk)
            await asyncio.sleep(0.001)
    assert b"".join(got).split() == [str(n).encode() for n in range(1, 20001)]
    assert await runtime_db.fetchval("SHOW statement_timeout") == "50ms"  # lifted for the export only


async def test_an_export_whose_reader_stops_lets_go_of_its_connection(app, client, auth, demo, monkeypatch):
    write = auth(demo, "consents:write")
    for i in range(20):
        assert (await sign_up(client, write, f"idle-{i}", {"marketing-sms"})).status_code == 201
    monkeypatch.setattr(lines, "QUEUED_CHUNKS", 1)
    monkeypatch.setattr(streams, "IDLE_SECONDS", 0.5)
    condition, args = search.where(search.EventFilter(), demo)
    pool = app.state.audit_pool
    stopped = False
    try:
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            chunks = lines.stream(conn, lines.statement("ndjson", condition), args)
            await chunks.__anext__()  # one chunk read, then the reader stops
            await asyncio.sleep(1.5)
            try:
                while True:
                    await chunks.__anext__()
            except StopAsyncIteration:
                raise AssertionError("a stalled export ran to its end") from None
            except TimeoutError:
                stopped = True
    except asyncpg.InterfaceError:  # asyncpg may close a connection whose COPY was cut: the pool replaces it
        pass
    assert stopped
    await asyncio.sleep(0.1)
    assert all(h._in_use is None for h in pool._holders)  # noqa: SLF001 - the connection is back (or replaced)
