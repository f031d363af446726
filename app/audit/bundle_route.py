"""GET /v1/audit/bundle: the tenant's audit bundle (app/proof/bundle.py), streamed as it is written.

The ZIP is written to an unseekable stream (so each member carries a data descriptor instead of
sizes patched in afterwards) whose chunks go to the response as they come: the first bytes leave
at once, however large the ledger, and the writer waits (`drain`) while more than BUFFER bytes are
unread, so memory stays flat whatever the client's pace. A client that reads nothing for
streams.IDLE_SECONDS loses the download (its snapshot would otherwise hold a connection and old row
versions for as long as it likes); at most CONCURRENT bundles are written at once per process
(429 beyond). Before the first byte: the checkpoint that covers every event (on the primary: a
rewritten history is a 409 problem) and the snapshot's connection (from AUDIT_DATABASE_URL's pool
when set: a full pool is a 503 problem). A failure after the first byte cannot become an error
status: the stream stops short, and a ZIP without its manifest never verifies.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
from fastapi import APIRouter, Request

from app.auth.deps import AuditRead
from app.core.db import AuditReader
from app.audit import streams
from app.audit.streams import ReleasingResponse, Slots
from app.core.errors import problem_responses
from app.proof import log as proof_log
from app.proof.bundle import BundleWriter, snapshot
from app.proof.context import Proof

log = logging.getLogger("consent_ledger.audit")
router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=problem_responses(401, 403, 409, 429))
BUFFER = 4 << 20  # unread bytes before the writer waits
WRITING = Slots(2, "audit bundles")  # written at once by one process


class _Stream:
    """A write-only, unseekable file: what the ZIP writer writes (from the event loop or from the
    thread that compresses events) is queued for the response."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.chunks: collections.deque[bytes] = collections.deque()
        self.lock = threading.Lock()
        self.size = 0
        self.ready = asyncio.Event()  # something to read, or the end
        self.taken = asyncio.Event()  # the reader took something
        self.done = False

    def write(self, data: bytes) -> int:
        with self.lock:
            self.chunks.append(bytes(data))
            self.size += len(data)
        self.loop.call_soon_threadsafe(self.ready.set)
        return len(data)

    def flush(self) -> None:
        return None

    def finish(self) -> None:
        self.done = True
        self.ready.set()

    async def drain(self) -> None:
        while self.size > BUFFER:
            self.taken.clear()
            await streams.reader_took(self.taken)

    def take(self) -> bytes:
        with self.lock:
            data = b"".join(self.chunks)
            self.chunks.clear()
            self.size = 0
        self.taken.set()
        return data


async def _produce(stream: _Stream, writer: BundleWriter, conn: asyncpg.Connection, proof: Proof, filename: str,
                   release: Callable[[], Awaitable[None]]) -> None:
    """Write the bundle; whatever happens, give back the connection and the slot at once (a client
    that stalls the response does not hold them)."""
    try:
        await snapshot(conn, writer, proof, filename)
    finally:
        stream.finish()
        await release()


async def _body(stream: _Stream, produce: Callable[[], Awaitable[None]], filename: str) -> AsyncIterator[bytes]:
    """The response body. The writer (`produce()`, which finishes `stream`) runs as a task started
    here, so that however the response ends (done, failed, the client gone) it is cancelled and
    awaited."""
    task = asyncio.create_task(produce())
    try:
        while True:
            await stream.ready.wait()
            stream.ready.clear()
            if data := stream.take():
                yield data
            if stream.done and not stream.size:
                break
        await task  # a failure ends the stream short: the ZIP has no manifest, so nothing verifies
    except Exception:
        log.exception("audit bundle %s: stopped before its end", filename)
        raise
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@router.get("/bundle", operation_id="audit-bundle",
            responses={200: {"content": {"application/zip": {}},
                             "description": "The tenant's audit bundle (docs/proof.md): verify it offline with "
                                            "`consent-ledger verify-bundle`"}})
async def audit_bundle(request: Request, principal: AuditRead, reader: AuditReader):
    """Everything needed to check the tenant's ledger without the service: every event and duty record
    in log order, the notices and disclosures they cite, the catalog's history, the signed checkpoints,
    the public keys and a README (Korean and English) saying how to verify it."""
    state = request.app.state
    proof: Proof = state.proof
    conn, release = await WRITING.hold(reader)
    try:
        await proof_log.make_checkpoint(state.pool, principal.tenant, proof, force=True,
                                        checkpoint_dir=state.settings.checkpoint_dir)
    except BaseException:
        await release()
        raise
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    filename = f"{principal.tenant}-audit-{stamp}.zip"
    stream = _Stream(asyncio.get_running_loop())
    writer = BundleWriter(stream, principal.tenant, drain=stream.drain)
    body = _body(stream, lambda: _produce(stream, writer, conn, proof, filename, release), filename)
    return ReleasingResponse(body, release, media_type="application/zip",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})
