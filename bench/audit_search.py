"""Issue 11 point 1 at scale: `GET /v1/audit/events`, filtered pages of 100 followed by the keyset
cursor, over HTTP against the project service, beside the same pages fetched by a plain asyncpg
query on one connection (the raw baseline, in the same run).

Runs after bench/big.py has seeded the tenant (subjects big-0 .. big-N, 10 events each on the
bench-3 form, recorded at visit_time(): spread over 2024 and early 2025). A walk starts at a random
point (a random `recorded_from` for the filters with a time range, a cursor at a random instant for
the others: what page N of a long listing asks) and follows `next_cursor` for PAGES_PER_WALK pages.
HTTP and baseline walk from different random starts (so neither reads pages the other just
cached); before timing, a few walks are run on both sides from the same start and must return the
same event ids.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable
from urllib.parse import urlencode

import asyncpg

from app.core.pagination import encode_cursor
from bench import big, database
from bench.big import PREFIX
from bench.load import Connection
from bench.seed import EPOCH, Catalog
from bench.servers import Server

PAGE = 100
PAGES_PER_WALK = 4
P99_TARGET_MS = 50.0
SAME_ROWS_WALKS = 3  # per filter, checked on both sides before the clock runs
WARM_UP_WALKS = 3
SPAN = timedelta(days=365)  # where walks start: the seeded visits cover 2024 and a little more
WINDOW = timedelta(days=30)
ZERO_ID = uuid.UUID(int=0)

# The raw baseline: the same columns the service reads, its WHERE written out by hand per filter.
RAW = ("SELECT e.*, s.external_id AS subject_ref FROM consent_events e JOIN subjects s ON s.id = e.subject_id "
       "WHERE e.tenant_id = $1 AND {where} AND (e.recorded_at, e.id) > ($2, $3) "
       f"ORDER BY e.recorded_at, e.id LIMIT {PAGE + 1}")


@dataclass(frozen=True)
class Filter:
    name: str
    params: Callable[[random.Random], dict[str, str]]  # the query's filter parameters for one walk
    raw_where: str  # the baseline's condition, on $4 ...
    raw_args: Callable[[dict[str, str]], list[Any]]
    from_cursor: bool  # a walk starts from a cursor at a random instant (else at the filter's first page)


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def filters(catalog: Catalog, channel: str, subjects: int) -> list[Filter]:
    def window(rng: random.Random) -> dict[str, str]:
        start = EPOCH + timedelta(seconds=rng.randrange(int((SPAN - WINDOW).total_seconds())))
        return {"recorded_from": _iso(start), "recorded_to": _iso(start + WINDOW)}

    def when(params: dict[str, str], name: str) -> datetime:
        return datetime.fromisoformat(params[name])

    return [
        Filter("purpose + 30 days", lambda rng: {"purpose": "marketing-sms", **window(rng)},
               "e.purpose_key = $4 AND e.recorded_at >= $5 AND e.recorded_at < $6",
               lambda p: [p["purpose"], when(p, "recorded_from"), when(p, "recorded_to")], False),
        Filter("member id", lambda rng: {"subject_id": f"{PREFIX}{rng.randrange(subjects)}"},
               "s.external_id = $4", lambda p: [p["subject_id"]], False),
        Filter("action + channel", lambda rng: {"action": "granted", "channel": channel},
               "e.action = $4 AND e.purpose_id IN (SELECT id FROM purposes WHERE tenant_id = $1 AND channel = $5)",
               lambda p: [p["action"], p["channel"]], True),
        Filter("point + notice version",
               lambda rng: {"collection_point": catalog.collection_point_key,
                            "notice_version": catalog.notice_version},
               "e.collection_point_key = $4 AND e.notice_version = $5",
               lambda p: [p["collection_point"], p["notice_version"]], True),
        Filter("actor type", lambda rng: {"actor_type": "subject"}, "e.actor_type = $4",
               lambda p: [p["actor_type"]], True),
    ]


def _start(f: Filter, params: dict[str, str], rng: random.Random) -> tuple[datetime, uuid.UUID]:
    """Where a walk begins: at a random instant (a cursor as the service makes them), or at the
    filter's first page (for the raw query: its range's start, so its index scan starts there too)."""
    if f.from_cursor:
        return EPOCH + timedelta(seconds=rng.randrange(int(SPAN.total_seconds()))), ZERO_ID
    if "recorded_from" in params:
        return datetime.fromisoformat(params["recorded_from"]) - timedelta(microseconds=1), ZERO_ID
    return EPOCH - timedelta(days=1), ZERO_ID


async def _http_walk(conn: Connection, server: Server, headers: dict[str, str], params: dict[str, str],
                     start: tuple[datetime, uuid.UUID] | None) -> tuple[list[float], list[list[str]]]:
    latencies, pages = [], []
    cursor = encode_cursor(start[0].isoformat(), start[1]) if start else None
    for _ in range(PAGES_PER_WALK):
        query = urlencode({**params, "limit": PAGE, **({"cursor": cursor} if cursor else {})})
        seconds, body = await conn.get(f"/v1/audit/events?{query}", headers, server.log_tail)
        latencies.append(seconds)
        page = json.loads(body)
        pages.append([item["id"] for item in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    return latencies, pages


async def _raw_walk(conn: asyncpg.Connection, tenant: str, f: Filter, params: dict[str, str],
                    after: tuple[datetime, uuid.UUID]) -> tuple[list[float], list[list[str]]]:
    query, args = RAW.format(where=f.raw_where), f.raw_args(params)
    latencies, pages = [], []
    for _ in range(PAGES_PER_WALK):
        started = time.perf_counter()
        rows = await conn.fetch(query, tenant, *after, *args)
        latencies.append(time.perf_counter() - started)
        more, rows = len(rows) > PAGE, rows[:PAGE]
        pages.append([str(r["id"]) for r in rows])
        if not more:
            break
        after = (rows[-1]["recorded_at"], rows[-1]["id"])
    return latencies, pages


def _summary(latencies: list[float], pages: list[list[str]]) -> dict[str, float]:
    figures = big._summary(latencies)
    return {"pages": figures.pop("n"), "rows_per_page": sum(map(len, pages)) / max(len(pages), 1), **figures}


async def _measure(dsn: str, server: Server, headers: dict[str, str], catalog: Catalog, subjects: int,
                   walks: int) -> dict[str, Any]:
    raw = await asyncpg.connect(dsn)
    http = await Connection(server.port).open()
    try:
        channel = await raw.fetchval("SELECT channel FROM purposes WHERE tenant_id = $1 AND key = 'marketing-sms'",
                                     catalog.tenant)
        results = {}
        for f in filters(catalog, channel, subjects):
            rng = random.Random()  # fresh starts each run: a repeated run would find its pages cached

            def walk_start() -> tuple[dict[str, str], tuple[datetime, uuid.UUID]]:
                params = f.params(rng)
                return params, _start(f, params, rng)

            for _ in range(SAME_ROWS_WALKS + WARM_UP_WALKS):
                params, start = walk_start()
                _, http_pages = await _http_walk(http, server, headers, params, start if f.from_cursor else None)
                _, raw_pages = await _raw_walk(raw, catalog.tenant, f, params, start)
                if http_pages != raw_pages:
                    raise RuntimeError(f"search {f.name!r}: the service and the raw query differ for {params}")
            sides: dict[str, tuple[list[float], list[list[str]]]] = {"http": ([], []), "raw": ([], [])}
            for _ in range(walks):  # alternating, each side from its own random start
                for side in ("http", "raw"):
                    params, start = walk_start()
                    if side == "http":
                        lat, pages = await _http_walk(http, server, headers, params, start if f.from_cursor else None)
                    else:
                        lat, pages = await _raw_walk(raw, catalog.tenant, f, params, start)
                    sides[side][0].extend(lat)
                    sides[side][1].extend(pages)
            results[f.name] = {side: _summary(*figures) for side, figures in sides.items()}
            results[f.name]["p99_ratio"] = results[f.name]["http"]["p99_ms"] / results[f.name]["raw"]["p99_ms"]
            results[f.name]["p50_ratio"] = results[f.name]["http"]["p50_ms"] / results[f.name]["raw"]["p50_ms"]
        return results
    finally:
        http.close()
        await raw.close()


def cluster_by_time(dsn: str) -> float | None:
    """Put consent_events in the physical order the service's own appends give it.

    The service inserts events as they are recorded, so its heap is in recorded_at order and a
    time-ordered page of the search reads neighbouring heap pages. The bench's seeding COPYs subject
    after subject (10 events, a year apart), which scatters any time window over the whole table:
    a page would then read as many heap pages as it has rows, which no live ledger does. CLUSTER on
    the search's index restores the live order (once: it is remembered in pg_index). Seconds taken,
    None when already done."""
    async def work() -> float | None:
        conn = await asyncpg.connect(database.dsn(dsn))
        try:
            if await conn.fetchval("SELECT indisclustered FROM pg_index "
                                   "WHERE indexrelid = 'ix_consent_events_tenant_recorded_id'::regclass"):
                return None
            started = time.perf_counter()
            await conn.execute("SET maintenance_work_mem = '1GB'")
            await conn.execute("CLUSTER consent_events USING ix_consent_events_tenant_recorded_id")
            await conn.execute("ANALYZE consent_events")
            return time.perf_counter() - started
        finally:
            await conn.close()

    seconds = asyncio.run(work())
    if seconds is not None:
        print(f"\nconsent_events clustered in recorded_at order (the service's append order) in {seconds:.0f} s",
              flush=True)
    return seconds


def run(dsn: str, catalog: Catalog, server: Server, headers: dict[str, str], subjects: int,
        walks: int) -> dict[str, Any]:
    print(f"\nauditors' search: pages of {PAGE} following the keyset cursor, {walks} walks of up to "
          f"{PAGES_PER_WALK} pages per filter and side, one call at a time", flush=True)
    results = asyncio.run(_measure(database.dsn(dsn), server, headers, catalog, subjects, walks))
    _print(results)
    return results


def _print(results: dict[str, Any]) -> None:
    print(f"  {'filter':<24} {'pages':>5} {'rows':>5} | {'HTTP p50':>8} {'p99 ms':>7} {'max':>7} | "
          f"{'raw p50':>8} {'p99 ms':>7} | {'p50 x':>6} {'p99 x':>6} | target p99 <= {P99_TARGET_MS:g} ms")
    for name, r in results.items():
        h, b = r["http"], r["raw"]
        verdict = "PASS" if h["p99_ms"] <= P99_TARGET_MS else "FAIL"
        print(f"  {name:<24} {h['pages']:>5} {h['rows_per_page']:>5.0f} | {h['p50_ms']:>8.2f} {h['p99_ms']:>7.2f} "
              f"{h['max_ms']:>7.2f} | {b['p50_ms']:>8.2f} {b['p99_ms']:>7.2f} | {r['p50_ratio']:>6.2f} "
              f"{r['p99_ratio']:>6.2f} | {verdict}")
    print("  HTTP = GET /v1/audit/events through the project service (JWT, filters, printed events) on one\n"
          "  keep-alive connection; raw = the same page's rows by a plain asyncpg query on one connection.",
          flush=True)
