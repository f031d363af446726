"""Issue 11 points 1-2: the tenant-wide search and the streaming export of events."""

from __future__ import annotations

import csv
import io
import json

from app.consents import chain
from tests.helpers import sign_up


async def _tenant_with_events(client, auth, demo) -> dict:
    headers = auth(demo, "consents:write")
    for i, granted in enumerate(({"marketing", "marketing-sms"}, {"marketing-email"}, {"analytics"})):
        assert (await sign_up(client, headers, f"a-{i}", granted)).status_code == 201
    assert (await client.post("/v1/subjects/a-0/consents/marketing-sms/withdraw", headers=headers)).status_code == 200
    return auth(demo, "audit:read")


async def test_search_filters_pages_by_keyset_and_counts(client, auth, demo, new_tenant):
    audit = await _tenant_with_events(client, auth, demo)
    everything, cursor = [], None
    while True:
        params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/audit/events", params=params, headers=audit)).json()
        everything += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(everything) == 3 * 11 + 1 and len({e["id"] for e in everything}) == len(everything)
    assert [e["recorded_at"] for e in everything] == sorted(e["recorded_at"] for e in everything)
    assert all(chain.document_hash(e) == e["hash"] for e in everything)  # each exactly as hashed

    def search(**params):
        return client.get("/v1/audit/events", params=params, headers=audit)

    granted = (await search(purpose="marketing-sms", action="granted", counts="true")).json()
    assert [e["subject_id"] for e in granted["items"]] == ["a-0"] and granted["count"] == 1
    withdrawn = (await search(category="marketing", action="withdrawn")).json()["items"]
    assert [(e["subject_id"], e["purpose"]) for e in withdrawn] == [("a-0", "marketing-sms")]
    contract = (await search(legal_basis="contract")).json()["items"]
    assert {e["purpose"] for e in contract} == {"membership"} and len(contract) == 3
    sms = (await search(channel="sms", subject_id="a-1")).json()["items"]
    assert [e["status"] for e in sms] == ["refused"]
    assert (await search(collection_point="signup", actor_type="subject", method="web", counts="true")
            ).json()["count"] == 33
    first, last = everything[0]["recorded_at"], everything[-1]["recorded_at"]
    ranged = (await search(recorded_from=last, counts="true")).json()
    assert ranged["count"] == 1 and ranged["items"][0]["action"] == "withdrawn"
    assert (await search(recorded_from=last, recorded_to=first)).status_code == 422
    assert (await search(cursor="bm90IGEgY3Vyc29y")).status_code == 422
    assert (await search(action="invented")).status_code == 422
    assert (await client.get("/v1/audit/events", headers=auth(demo, "consents:read"))).status_code == 403
    stranger = auth(await new_tenant(), "audit:read")
    assert (await client.get("/v1/audit/events", headers=stranger)).json()["items"] == []


async def test_export_streams_what_the_search_finds_as_ndjson_csv_and_gzip(client, auth, demo):
    audit = await _tenant_with_events(client, auth, demo)
    found = (await client.get("/v1/audit/events", params={"category": "marketing", "limit": 500},
                              headers=audit)).json()["items"]
    exported = await client.get("/v1/audit/export", params={"category": "marketing"}, headers=audit)
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in exported.text.splitlines()]
    assert lines == found

    as_csv = await client.get("/v1/audit/export", params={"format": "csv", "headers": "ko", "bom": "true",
                                                          "purpose": "marketing-sms"}, headers=audit)
    assert as_csv.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(as_csv.content.decode("utf-8-sig"))))
    assert rows[0][:3] == ["기록시각", "발생시각", "회원ID"] and len(rows) == 1 + 4
    assert {r[2] for r in rows[1:]} == {"a-0", "a-1", "a-2"}

    zipped = await client.get("/v1/audit/export", headers={**audit, "Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert len(zipped.text.splitlines()) == 34  # httpx undoes the gzip, as any client does
    assert (await client.get("/v1/audit/export", params={"format": "xml"}, headers=audit)).status_code == 422


class _Counting:
    """The real pool, counting the calls made through it."""

    def __init__(self, pool) -> None:
        self.pool, self.calls = pool, 0

    def __getattr__(self, name):
        self.calls += 1
        return getattr(self.pool, name)


async def test_audit_reads_take_the_audit_database_pool(app, client, auth, demo):
    """Issue 11 point 8: with AUDIT_DATABASE_URL set (here: the primary, as the tests run), search,
    export and verify read through a pool of their own."""
    assert app.state.settings.audit_database_url and app.state.audit_pool is not app.state.pool
    audit = await _tenant_with_events(client, auth, demo)
    real = app.state.audit_pool
    counting = app.state.audit_pool = _Counting(real)
    try:
        for path in ("/v1/audit/events", "/v1/audit/export", "/v1/subjects/a-0/consents/verify"):
            before = counting.calls
            assert (await client.get(path, headers=audit)).status_code == 200
            assert counting.calls > before, path
        before = counting.calls
        operator = auth(demo, "consents:read")
        assert (await client.get("/v1/subjects/a-0/consents", headers=operator)).status_code == 200
        assert counting.calls == before  # the operator's reads stay on the primary
    finally:
        app.state.audit_pool = real


async def test_exports_at_once_are_bounded_and_each_gives_its_connection_back(client, auth, demo):
    from app.audit import router as audit_router

    audit = await _tenant_with_events(client, auth, demo)
    slots = audit_router.EXPORTING
    for _ in range(3):
        assert (await client.get("/v1/audit/export", headers=audit)).status_code == 200
    assert slots.free() == slots.count  # every export gave its slot (and connection) back
    for _ in range(slots.count):
        slots._free.acquire()
    try:
        busy = await client.get("/v1/audit/export", headers=audit)
        assert busy.status_code == 429 and busy.headers["content-type"] == "application/problem+json"
        assert busy.headers["retry-after"] == "30"
    finally:
        for _ in range(slots.count):
            slots._free.release()
