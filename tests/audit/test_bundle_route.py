"""Issue 11 point 3: the audit bundle as one download, streamed as it is written, that the offline
verifier accepts, holding the same events and catalog history as the bundle command writes."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from app.proof import bundle as bundle_module
from app.proof.verify_bundle import verify
from tests.helpers import sign_up


async def _download(client, headers, path: Path) -> dict[str, str]:
    async with client.stream("GET", "/v1/audit/bundle", headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        with path.open("wb") as out:
            async for chunk in response.aiter_bytes():
                out.write(chunk)
        return dict(response.headers)


async def test_the_bundle_downloads_and_verifies_offline(app, client, auth, demo, new_tenant, tmp_path, db):
    headers = auth(demo)
    for i in range(3):
        assert (await sign_up(client, headers, f"m-{i}", {"marketing-sms"})).status_code == 201
    assert (await client.post("/v1/subjects/m-0/consents/marketing-sms/withdraw", headers=headers)).status_code == 200
    audit = auth(demo, "audit:read")
    path = tmp_path / "downloaded.zip"
    response_headers = await _download(client, audit, path)
    assert response_headers["content-type"] == "application/zip"
    assert "attachment" in response_headers["content-disposition"] and "content-length" not in response_headers

    result = verify(path)
    assert result.valid, [b.as_dict() for b in result.breaks]
    events = await db.fetchval("SELECT count(*) FROM consent_events WHERE tenant_id = $1", demo)
    assert result.counts["events"] == events and result.counts["subjects"] == 3
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
        assert all(info.flag_bits & 0x08 for info in zf.infolist() if info.filename != "manifest.json")  # streamed
    manifest = json.loads(members["manifest.json"])
    assert manifest["counts"]["catalog_changes"] == len(json.loads(members["catalog.json"])) > 0
    assert "verify-bundle" in members["README.md"].decode() and "검증" in members["README.md"].decode()

    # The same ledger and history as the command's bundle, byte for byte.
    written = tmp_path / "written.zip"
    await bundle_module.write_bundle(app.state.pool, demo, app.state.proof, written)
    with zipfile.ZipFile(written) as zf:
        assert zf.read("events.ndjson") == members["events.ndjson"]
        assert zf.read("catalog.json") == members["catalog.json"]
        assert zf.read("notices.json") == members["notices.json"]

    stranger = tmp_path / "stranger.zip"
    await _download(client, auth(await new_tenant(), "audit:read"), stranger)
    assert verify(stranger).counts["events"] == 0  # nothing of this tenant
    assert (await client.get("/v1/audit/bundle", headers=auth(demo, "consents:read"))).status_code == 403
    assert (await client.get("/v1/audit/bundle")).status_code == 401


async def test_a_slow_reader_keeps_the_writer_waiting_not_the_memory(monkeypatch):
    """The route's stream under a slow client: the writer waits while BUFFER bytes are unread."""
    import asyncio
    import os

    from app.audit import bundle_route

    monkeypatch.setattr(bundle_route, "BUFFER", 64 * 1024)

    async def download(drain: bool) -> int:
        stream = bundle_route._Stream(asyncio.get_running_loop())
        writer = bundle_module.BundleWriter(stream, "t", drain=stream.drain if drain else None)

        async def produce() -> None:
            try:
                for _ in range(256):  # 4 MB that does not compress, in the batches the bundle writes
                    await asyncio.to_thread(writer.events.write, os.urandom(16 * 1024))
                    await writer.drain()
                writer.start_checkpoints()
                writer.finish(tree_size=0, root_hash=None, counts={"events": 0}, notices=[], disclosures=[],
                              jwks={"keys": []}, filename="x.zip")
            finally:
                stream.finish()

        peak, size = 0, 0
        async for chunk in bundle_route._body(stream, produce, "x.zip"):
            peak, size = max(peak, len(chunk) + stream.size), size + len(chunk)
            await asyncio.sleep(0.05)  # a slow client
        assert size > 4 << 20
        return peak

    paced, unpaced = await download(drain=True), await download(drain=False)
    assert paced < 128 * 1024 < 512 * 1024 < unpaced, (paced, unpaced)


def _scope(headers: dict[str, str]) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": "/v1/audit/bundle", "raw_path": b"/v1/audit/bundle", "query_string": b"", "root_path": "",
            "headers": [(b"authorization", headers["Authorization"].encode()), (b"host", b"test")],
            "client": ("127.0.0.1", 50000), "server": ("test", 80)}


async def test_a_client_that_leaves_or_stalls_gives_back_the_connection_and_the_slot(app, client, auth, demo,
                                                                                   monkeypatch):
    import asyncio

    from app.audit import bundle_route, streams

    headers = auth(demo, "audit:read")
    for i in range(3):
        assert (await sign_up(client, auth(demo), f"l-{i}", {"marketing-sms"})).status_code == 201
    pool = app.state.audit_pool

    async def run(receive_after_start, send_blocks: bool) -> list[dict]:
        started, sent, calls = asyncio.Event(), [], 0

        async def receive():
            nonlocal calls
            calls += 1
            if calls == 1:
                return {"type": "http.request", "body": b"", "more_body": False}
            await started.wait()
            return await receive_after_start()

        async def send(message):
            sent.append(message)
            if message["type"] == "http.response.start":
                started.set()
            elif send_blocks:
                await asyncio.Event().wait()  # a client that never reads

        await asyncio.wait_for(app(_scope(headers), receive, send), 30)
        return sent

    free = pool.get_idle_size()

    async def gone():
        return {"type": "http.disconnect"}

    await run(gone, send_blocks=False)  # gone as soon as the headers left
    # Stalled: the writer waits IDLE_SECONDS for the reader, then gives up and lets go.
    monkeypatch.setattr(bundle_route, "BUFFER", 1)
    monkeypatch.setattr(streams, "IDLE_SECONDS", 0.5)

    async def later():
        await asyncio.sleep(3)
        return {"type": "http.disconnect"}

    await run(later, send_blocks=True)
    await asyncio.sleep(0.1)
    assert bundle_route.WRITING.free() == bundle_route.WRITING.count  # every slot given back
    assert pool.get_idle_size() >= free  # and every connection

    # Busy: past CONCURRENT bundles at once, a 429 problem with Retry-After.
    for _ in range(bundle_route.WRITING.count):
        bundle_route.WRITING._free.acquire()
    try:
        busy = await client.get("/v1/audit/bundle", headers=headers)
        assert busy.status_code == 429 and busy.headers["retry-after"] == "30"
        assert busy.headers["content-type"] == "application/problem+json"
    finally:
        for _ in range(bundle_route.WRITING.count):
            bundle_route.WRITING._free.release()

