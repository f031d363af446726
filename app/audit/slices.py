"""A large export printed by two backends at once: consecutive windows of recorded time, one
snapshot (issue 11 point 2).

One backend prints an NDJSON line in about 13 us here (the `to_json` of the free-text members is a
third of it), so one COPY tops out near 75,000 events/s on these 2-core machines, below the
100,000/s target, while the service itself waits. The export's order is (recorded_at, id), so
windows [lo, hi) of recorded time are consecutive pieces of it whatever the other filters: the
export's own connection prints one window while a second connection of the pool prints the next,
in the same snapshot (`pg_export_snapshot()` / `SET TRANSACTION SNAPSHOT`), and the lines go out
in window order. Measured in bench/README.md ("Issue 11 ... third pass").

Bounds:
- at most AHEAD windows are open at once, and a window whose printed lines wait for the client
  beyond WINDOW_BYTES pauses its COPY (asyncpg stops reading the socket while the sink waits):
  memory is bounded by AHEAD x WINDOW_BYTES whatever the export's size;
- a window aims at WINDOW_ROWS events: the first width comes from the planner's estimate of the
  whole export, each next from the rows the last finished window held (x1/4 to x4);
- the client that holds a chunk for streams.IDLE_SECONDS without reading on loses the download, as
  with one COPY (Printers.watch); waiting behind a slow window is not the client's idleness;
- with no connection idle in the pool, or an export under 2 x WINDOW_ROWS events, or one member's
  events, it is the one COPY of lines.stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import anyio
import asyncpg

from app.audit import lines, streams
from app.audit.filters import EventFilter, where

WINDOW_ROWS = 20_000
WINDOW_BYTES = 16 << 20
AHEAD = 2  # windows open at once: the one being sent and the one printed meanwhile
log = logging.getLogger("consent_ledger.audit")
_SNAPSHOT = re.compile(r"[0-9A-Fa-f]+-[0-9A-Fa-f]+(-[0-9]+)?")
SPAN = ("SELECT min(recorded_at), max(recorded_at) FROM consent_events WHERE tenant_id = $1 "
        "AND recorded_at >= coalesce($2, '-infinity'::timestamptz) AND recorded_at < coalesce($3, 'infinity'::timestamptz)")


@dataclass
class Window:
    index: int
    lo: datetime
    hi: datetime | None  # None: to the end
    chunks: deque[bytes] = field(default_factory=deque)
    size: int = 0  # bytes in chunks
    rows: int = 0
    done: bool = False


class Plan:
    """The windows, handed out in order: each starts where the last ended."""

    def __init__(self, lo: datetime, last: datetime, width: timedelta) -> None:
        self.next_lo: datetime | None = lo
        self.last = last
        self.width = max(width, timedelta(microseconds=1))
        self.count = 0

    def take(self) -> Window | None:
        if (lo := self.next_lo) is None:
            return None
        hi: datetime | None = lo + self.width
        if hi > self.last:
            hi = None
        self.next_lo = hi
        self.count += 1
        return Window(self.count - 1, lo, hi)

    @property
    def exhausted(self) -> bool:
        return self.next_lo is None

    def learn(self, window: Window) -> None:
        if window.hi is not None:
            factor = 4.0 if window.rows == 0 else min(4.0, max(0.25, WINDOW_ROWS / window.rows))
            self.width = max(timedelta(microseconds=1), (window.hi - window.lo) * factor)


async def plan(conn: asyncpg.Connection, tenant: str, f: EventFilter, condition: str, args: list[Any]) -> Plan | None:
    """Windows for this export, or None when one COPY will do."""
    if f.subject_id is not None:
        return None
    lo, last = await conn.fetchrow(SPAN, tenant, f.recorded_from, f.recorded_to)
    if lo is None or lo == last:
        return None
    rows = await estimate(conn, condition, args)
    if rows < 2 * WINDOW_ROWS:
        return None
    return Plan(lo, last, (last - lo) * (WINDOW_ROWS / rows))


async def estimate(conn: asyncpg.Connection, condition: str, args: list[Any]) -> float:
    """The planner's count of the export's events: a guess from the statistics, at no cost (a count
    would read a rare filter's whole tenant twice); wrong by much, it costs a few windows' speed."""
    explained = await conn.fetchval(f"EXPLAIN (FORMAT JSON) SELECT 1 {lines.FROM} WHERE {condition}", *args)
    return (json.loads(explained) if isinstance(explained, str) else explained)[0]["Plan"]["Plan Rows"]


class Stopped(Exception):
    """A window's COPY cut because the export ended."""


class Printers:
    """Windows printed on several connections, handed to the client in order."""

    def __init__(self, plan: Plan, fmt: str, tenant: str, f: EventFilter) -> None:
        self.plan, self.fmt, self.tenant, self.filter = plan, fmt, tenant, f
        self.open: dict[int, Window] = {}
        self.head = 0  # the window being sent
        self.changed = asyncio.Event()  # lines, a window's end or an error: wakes the consumer
        self.moved = asyncio.Event()  # the consumer took lines or moved on: wakes waiting printers
        self.error: BaseException | None = None
        self.closed = False
        self.handed_at: float | None = None  # since when the client holds a chunk (None: it waits for lines)

    def close(self) -> None:
        """No more windows: printers waiting for room or their turn return, a COPY still sending
        is cut (a cancelled COPY may also end without raising, asyncpg waiting for the server)."""
        self.closed = True
        self._took()
        self.changed.set()

    async def watch(self) -> None:
        """The client's idle limit: a printer waits for room or its turn behind the client or behind
        a slow window, and only the first is the client's fault, so the limit is kept here, on the
        time the client has held its last chunk."""
        loop = asyncio.get_running_loop()
        while not self.closed:
            await asyncio.sleep(min(1.0, streams.IDLE_SECONDS / 5))
            if self.handed_at is not None and loop.time() - self.handed_at >= streams.IDLE_SECONDS:
                self.error = self.error or TimeoutError(f"the client read nothing for {streams.IDLE_SECONDS:.0f} s")
                self.close()

    def _statement(self, window: Window) -> tuple[str, list[Any]]:
        """The export's own filter narrowed to the window (which plan() kept inside its time range)."""
        narrowed = replace(self.filter, recorded_from=window.lo,
                           recorded_to=self.filter.recorded_to if window.hi is None else window.hi)
        condition, args = where(narrowed, self.tenant)
        return lines.statement(self.fmt, condition), args

    async def _wait(self) -> None:
        """Until the consumer takes lines or moves on, or close()."""
        await self.moved.wait()

    def _took(self) -> None:
        self.moved.set()
        self.moved = asyncio.Event()

    async def print_on(self, conn: asyncpg.Connection) -> None:
        try:
            while not self.closed:
                while not self.closed and self.plan.count - self.head >= AHEAD:
                    await self._wait()
                if self.closed or (window := self.plan.take()) is None:
                    return
                self.open[window.index] = window
                frames = lines._Frames()

                async def sink(data: bytes, window: Window = window, frames: lines._Frames = frames) -> None:
                    if self.closed:
                        raise Stopped
                    if out := frames.feed(bytes(data)):
                        window.chunks.append(out)
                        window.size += len(out)
                        self.changed.set()
                        while window.size >= WINDOW_BYTES and not self.closed:
                            await self._wait()

                query, args = self._statement(window)
                await lines.copy(conn, query, args, sink)
                window.rows, window.done = frames.rows, True
                self.plan.learn(window)
                self.changed.set()
        except BaseException as error:
            self.error = self.error or error
            self.close()  # the other printer stops too; the consumer raises the error
            raise

    async def lines(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        while True:
            if self.error is not None:
                raise self.error
            window = self.open.get(self.head)
            if window is not None and window.chunks:
                chunk = window.chunks.popleft()
                window.size -= len(chunk)
                self._took()
                self.handed_at = loop.time()
                yield chunk
                self.handed_at = None
            elif window is not None and window.done:
                del self.open[self.head]
                self.head += 1
                self._took()
            elif window is None and self.plan.exhausted and self.head >= self.plan.count:
                return
            else:
                self.changed.clear()
                await self.changed.wait()


class _OtherServer(Exception):
    """The helper imported a snapshot of that name, and it is not the export's."""


async def _join(conn: asyncpg.Connection, snapshot: str) -> None:
    if not _SNAPSHOT.fullmatch(snapshot):
        raise RuntimeError(f"unexpected snapshot id {snapshot!r}")
    await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")


async def _second(conn: asyncpg.Connection, pool: asyncpg.Pool) -> tuple[asyncpg.Connection, Any] | None:
    """A spare connection of `pool` and its read-only transaction, in `conn`'s snapshot; None when
    none is spare, or when it is on another server than `conn` (an AUDIT_DATABASE_URL naming
    several replicas: the snapshot is not there, or one of the same name is another's)."""
    helper = await streams.spare(pool)
    if helper is None:
        return None
    transaction = helper.transaction(isolation="repeatable_read", readonly=True)
    snapshot = None
    try:
        snapshot, seen = await conn.fetchrow("SELECT pg_export_snapshot(), pg_current_snapshot()::text")
        await transaction.start()
        await _join(helper, snapshot)
        if await helper.fetchval("SELECT pg_current_snapshot()::text") != seen:
            raise _OtherServer(f"the helper's snapshot is not the export's ({seen})")
        return helper, transaction
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await lines.end(helper, transaction)
            await pool.release(helper)
        if snapshot is None or not isinstance(exc, (asyncpg.PostgresError, _OtherServer)):
            raise  # the export's own connection failed, or a cancellation: not a reason to go on
        log.warning("export: the spare connection cannot share the export's snapshot (%s); one COPY", exc)
        return None


async def stream(conn: asyncpg.Connection, pool: asyncpg.Pool, tenant: str, f: EventFilter, fmt: str,
                 condition: str, args: list[Any]) -> AsyncIterator[bytes]:
    """The export's lines (`conn` inside its repeatable-read, read-only transaction): in windows on
    `conn` and one more connection of `pool` when it pays, else lines.stream's one COPY."""
    windows = await plan(conn, tenant, f, condition, args)
    second = await _second(conn, pool) if windows is not None else None
    if second is None:
        async for data in lines.stream(conn, lines.statement(fmt, condition), args,
                                       in_index_order=f.subject_id is None):
            yield data
        return
    helper, transaction = second
    printers = Printers(windows, fmt, tenant, f)
    tasks: list[asyncio.Task[None]] = []
    try:
        await lines.settle(helper, True)
        await lines.settle(conn, True)
        tasks = [asyncio.create_task(printers.print_on(c)) for c in (conn, helper)]
        tasks.append(asyncio.create_task(printers.watch()))
        async for data in printers.lines():
            yield data
    finally:
        # shielded: a client gone is a cancellation that would otherwise strike every await here
        with anyio.CancelScope(shield=True):
            printers.close()
            for c in (conn, helper):
                lines.cut(c)  # a COPY still running (lines.copy)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await lines.end(helper, transaction)
            await pool.release(helper)
