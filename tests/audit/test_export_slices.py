"""A large export is printed in windows of recorded time on two connections sharing one snapshot
(app/audit/slices.py). Windows are made tiny here so that a few dozen events make many of them:
the bytes must be those of one COPY, in every format and filter, a write made during the export
must stay out of it, memory must stay within its bound, and both connections must come back
however the export ends."""

from __future__ import annotations

import asyncio
import gzip

import asyncpg
import pytest

from app.audit import lines, search, slices, streams
from app.audit.filters import EventFilter, where
from tests.helpers import sign_up

SUBJECTS = 24


@pytest.fixture
async def filled(client, auth, demo):
    write = auth(demo, "consents:write")
    for i in range(SUBJECTS):  # one request each: SUBJECTS distinct recorded instants
        assert (await sign_up(client, write, f"slice-{i:02}", {"marketing-sms"})).status_code == 201
    withdrawn = await client.post("/v1/subjects/slice-03/consents/marketing-sms/withdraw",
                                  json={"reason": 'a "quoted",\nreason'}, headers=write)
    assert withdrawn.status_code == 200
    return demo


@pytest.fixture
def tiny(monkeypatch):
    """Windows of about one event, at most 300 bytes waiting each, the planner's estimate replaced
    by a count (a fresh tenant has no statistics yet); every Printers made is kept."""
    monkeypatch.setattr(slices, "WINDOW_ROWS", 1)

    async def counted(conn, condition, args):
        return await conn.fetchval(f"SELECT count(*) {lines.FROM} WHERE {condition}", *args)

    monkeypatch.setattr(slices, "estimate", counted)
    monkeypatch.setattr(slices, "WINDOW_BYTES", 300)
    made: list[slices.Printers] = []
    original = slices.Printers.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(slices.Printers, "__init__", init)
    return made


async def _one_copy(pool, tenant, f, fmt):
    condition, args = where(f, tenant)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        return b"".join([d async for d in lines.stream(conn, lines.statement(fmt, condition), args,
                                                       in_index_order=f.subject_id is None)])


def _backends(pool) -> set[int]:
    return {h._con.get_server_pid() for h in pool._holders  # noqa: SLF001
            if h._con is not None and not h._con.is_closed()}


@pytest.mark.parametrize("params", [{}, {"format": "csv", "headers": "ko", "bom": "true"}, {"purpose": "marketing-sms"},
                                    {"action": "withdrawn"}])
async def test_windows_print_what_one_copy_prints(app, client, auth, filled, tiny, params):
    audit = auth(filled, "audit:read")
    before = _backends(app.state.audit_pool)
    reply = await client.get("/v1/audit/export", params=params, headers=audit)
    assert reply.status_code == 200
    assert before <= _backends(app.state.audit_pool)  # an export that ends well drops no connection
    f = EventFilter(purpose=params.get("purpose"), action=params.get("action"))
    fmt = params.get("format", "ndjson")
    expected = await _one_copy(app.state.audit_pool, filled, f, fmt)
    if fmt == "csv":
        expected = search.csv_header(True, True) + expected
    assert reply.content == expected and expected.count(b"\n") >= (1 if params.get("action") else SUBJECTS)
    if not params.get("action"):  # a single withdrawal is too few to be worth windows
        assert tiny and tiny[-1].plan.count >= 4, "the export was not printed in windows"


async def test_windows_gzip_and_a_time_range(app, client, auth, filled, tiny):
    audit = auth(filled, "audit:read")
    rows = await app.state.audit_pool.fetch("SELECT DISTINCT recorded_at FROM consent_events WHERE tenant_id = $1 "
                                            "ORDER BY 1", filled)
    f = EventFilter(recorded_from=rows[3]["recorded_at"], recorded_to=rows[-4]["recorded_at"])
    reply = await client.get("/v1/audit/export", headers={**audit, "Accept-Encoding": "gzip"},
                             params={"recorded_from": f.recorded_from.isoformat(), "recorded_to": f.recorded_to.isoformat()})
    assert reply.headers["content-encoding"] == "gzip"
    body = gzip.decompress(reply.content) if reply.content[:2] == b"\x1f\x8b" else reply.content
    assert body == await _one_copy(app.state.audit_pool, filled, f, "ndjson")
    assert tiny[-1].plan.count >= 4


async def test_a_write_during_the_export_stays_out_of_it(app, client, auth, filled, tiny):
    pool = app.state.audit_pool
    f = EventFilter()
    before = await _one_copy(pool, filled, f, "ndjson")
    condition, args = where(f, filled)
    got = []
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        chunks = slices.stream(conn, pool, filled, f, "ndjson", condition, args)
        got.append(await chunks.__anext__())
        # recorded now: the latest instant, in the last window, which no printer has started yet
        assert (await sign_up(client, auth(filled, "consents:write"), "slice-late", {"marketing-sms"})).status_code == 201
        got += [chunk async for chunk in chunks]
    assert b"".join(got) == before and b"slice-late" not in before
    assert b"slice-late" in await _one_copy(pool, filled, f, "ndjson")


async def test_memory_stays_within_its_bound_with_a_slow_reader(app, filled, tiny):
    pool = app.state.audit_pool
    f = EventFilter()
    condition, args = where(f, filled)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        out = []
        async for chunk in slices.stream(conn, pool, filled, f, "ndjson", condition, args):
            out.append(chunk)
            await asyncio.sleep(0.01)  # the printers run ahead meanwhile, as far as they may
            printers = tiny[-1]
            assert len(printers.open) <= slices.AHEAD
            longest = max((len(line) for line in b"".join(out).splitlines()), default=0) + 1
            assert all(w.size < slices.WINDOW_BYTES + 64 * longest for w in printers.open.values())
    assert b"".join(out) == await _one_copy(pool, filled, f, "ndjson")


async def test_without_a_spare_connection_it_is_one_copy(app, client, auth, filled, tiny, monkeypatch):
    async def none(pool):
        return None

    monkeypatch.setattr(streams, "spare", none)
    reply = await client.get("/v1/audit/export", headers=auth(filled, "audit:read"))
    assert reply.content == await _one_copy(app.state.audit_pool, filled, EventFilter(), "ndjson")
    assert not tiny  # no windows


async def test_a_spare_connection_on_another_server_gives_one_copy(app, client, auth, filled, tiny, monkeypatch,
                                                                   caplog):
    """AUDIT_DATABASE_URL naming several replicas: the spare connection may be on a server where the
    export's snapshot does not exist. The export is then one COPY, whole, and the spare goes back."""
    pool = app.state.audit_pool

    async def elsewhere(conn, snapshot):
        await conn.execute("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'")  # no such snapshot here

    monkeypatch.setattr(slices, "_join", elsewhere)
    reply = await client.get("/v1/audit/export", headers=auth(filled, "audit:read"))
    assert reply.status_code == 200
    assert reply.content == await _one_copy(pool, filled, EventFilter(), "ndjson")
    assert reply.content.count(b"\n") >= 10
    assert not tiny  # planned, then printed by one COPY
    assert "cannot share the export's snapshot" in caplog.text
    assert all(h._in_use is None for h in pool._holders)  # noqa: SLF001 - the spare went back


async def test_a_snapshot_of_the_same_name_elsewhere_is_not_the_exports(app, client, auth, filled, tiny, monkeypatch,
                                                                          caplog):
    """A snapshot id is short: a replica may hold one of the same name. The helper's snapshot must
    be the export's; here it is the helper's own, taken after a write: one COPY then."""
    pool = app.state.audit_pool

    async def own(conn, snapshot):
        async with app.state.pool.acquire() as other:
            await other.execute("SELECT pg_current_xact_id()")  # a transaction ends: later snapshots differ
        await conn.execute("SELECT 1")  # the helper's first statement takes its own snapshot

    monkeypatch.setattr(slices, "_join", own)
    reply = await client.get("/v1/audit/export", headers=auth(filled, "audit:read"))
    assert reply.status_code == 200
    assert reply.content == await _one_copy(pool, filled, EventFilter(), "ndjson")
    assert not tiny
    assert "the helper's snapshot is not the export's" in caplog.text
    assert all(h._in_use is None for h in pool._holders)  # noqa: SLF001


async def test_the_estimate_is_the_planners(app, filled, db):
    """Without the tests' count: the planner's figure, near the truth once the statistics are fresh."""
    await db.execute("ANALYZE consent_events; ANALYZE subjects")
    everything = await db.fetchval(f"SELECT count(*) {lines.FROM}")
    async with app.state.audit_pool.acquire() as conn:
        assert everything / 2 <= await slices.estimate(conn, "e.seq > $1", [0]) <= everything * 2
        assert await slices.plan(conn, filled, EventFilter(subject_id="slice-01"), *where(EventFilter(), filled)) is None


async def test_spare_never_waits_for_a_full_pool(database_url):
    pool = await asyncpg.create_pool(database_url.replace("+asyncpg", ""), min_size=1, max_size=1)
    try:
        async with pool.acquire():
            assert await asyncio.wait_for(streams.spare(pool), 0.5) is None
        helper = await streams.spare(pool)
        assert helper is not None
        await pool.release(helper)
    finally:
        await pool.close()


async def test_spare_leaves_half_of_the_pool_to_the_writes(database_url):
    """Without AUDIT_DATABASE_URL the exports share the ledger's pool: a helper is taken only while
    more than half of it is free, so large exports cannot crowd out the writes."""
    pool = await asyncpg.create_pool(database_url.replace("+asyncpg", ""), min_size=1, max_size=4)
    held: list[asyncpg.Connection | None] = []
    try:
        held.append(await pool.acquire())
        held.append(await streams.spare(pool))  # 1 of 4 in use: 3 free
        assert held[-1] is not None
        held.append(await streams.spare(pool))  # 2 of 4 in use: half free, no more helpers
        assert held[-1] is None
    finally:
        for conn in held:
            if conn is not None:
                await pool.release(conn)
        await pool.close()


async def _export(pool, tenant, **kwargs):
    """search.export as the route runs it: the connection and the release of its own."""
    conn = await pool.acquire()

    async def release():
        await pool.release(conn)

    return search.export(conn, pool, tenant, EventFilter(), fmt="ndjson", korean=False, bom=False, gzip=False,
                         release=release)


async def test_both_connections_come_back_however_it_ends(app, filled, tiny, monkeypatch):
    pool = app.state.audit_pool
    held = len(pool._holders)  # noqa: SLF001

    # 1. the reader goes after one chunk
    chunks = await _export(pool, filled)
    await chunks.__anext__()
    await chunks.aclose()
    # 2. the reader holds a chunk for IDLE_SECONDS: the export ends with the idle error
    monkeypatch.setattr(streams, "IDLE_SECONDS", 0.5)
    chunks = await _export(pool, filled)
    await chunks.__anext__()
    await asyncio.sleep(1.5)
    with pytest.raises(TimeoutError):
        async for _ in chunks:
            pass
    # 3. a window's statement fails: the error reaches the reader
    statement = slices.Printers._statement

    def broken(self, window):
        query, args = statement(self, window)
        return (query.replace("SELECT", "SELECT 1/0,", 1) if window.index == 3 else query), args

    monkeypatch.setattr(slices.Printers, "_statement", broken)
    with pytest.raises(asyncpg.DivisionByZeroError):
        async for _ in await _export(pool, filled):
            pass
    await asyncio.sleep(0.1)
    holders = pool._holders  # noqa: SLF001 - every connection back, none left in a transaction
    assert all(h._in_use is None for h in holders) and len(holders) == held
    assert not [h for h in holders if h._con is not None and not h._con.is_closed() and h._con.is_in_transaction()]
    assert len(tiny) == 3
