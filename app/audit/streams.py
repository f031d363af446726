"""What the streamed downloads (the export, the audit bundle) share: a bounded number at once per
process (429 beyond, so a few slow readers cannot hold every connection of the pool), the
connection taken before the first byte (a full pool is a 503 problem, not a 200 cut short), and
both given back exactly once however the response ends, the client gone before its first byte
included."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
from starlette.responses import StreamingResponse

from app.core.errors import Busy

IDLE_SECONDS = 300.0  # a reader taking nothing this long loses the download
SPARE_WAIT_SECONDS = 1.0


async def reader_took(event: asyncio.Event) -> None:
    """Wait for `event` (set when the client takes something): a client that reads nothing for
    IDLE_SECONDS does not hold a connection and a snapshot for hours."""
    try:
        await asyncio.wait_for(event.wait(), IDLE_SECONDS)
    except TimeoutError:
        raise TimeoutError(f"the client read nothing for {IDLE_SECONDS:.0f} s") from None


async def spare(pool: asyncpg.Pool) -> asyncpg.Connection | None:
    """One more connection of `pool` while more than half of the pool is free (idle, or room to
    open one), else None at once rather than a wait: a helper that speeds a download up, never one
    it waits for, and never one that takes the last half of a pool the writes share (without
    AUDIT_DATABASE_URL the exports draw on the ledger's own pool)."""
    free = pool.get_idle_size() + pool.get_max_size() - pool.get_size()
    if free <= pool.get_max_size() // 2:
        return None
    try:
        return await pool.acquire(timeout=SPARE_WAIT_SECONDS)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return None


class Slots:
    """At most `count` of `what` at once in this process."""

    def __init__(self, count: int, what: str) -> None:
        self.count, self.what = count, what
        self._free = threading.BoundedSemaphore(count)

    def free(self) -> int:
        return self._free._value  # noqa: SLF001 - for the tests' check that every slot came back

    async def hold(self, pool: asyncpg.Pool) -> tuple[asyncpg.Connection, Callable[[], Awaitable[None]]]:
        """A slot and a connection of `pool`, and the one call that gives both back."""
        if not self._free.acquire(blocking=False):
            raise Busy(f"{self.count} {self.what} are being written; try again when one is done",
                       headers={"Retry-After": "30"})
        try:
            conn = await pool.acquire()
        except BaseException:
            self._free.release()
            raise
        given = False

        async def give_back() -> None:
            nonlocal given
            if given:
                return
            given = True
            try:
                await pool.release(conn)
            finally:
                self._free.release()

        return conn, give_back


class ReleasingResponse(StreamingResponse):
    """A streamed response that calls `release` when it ends, whatever the body got to do."""

    def __init__(self, body: AsyncIterator[bytes], release: Callable[[], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(body, **kwargs)
        self.release = release

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 - ASGI
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            await self.release()
