"""Second part: read latency with millions of events in the ledger.

Seeds subjects of EVENTS_PER_SUBJECT events each with COPY (indexes, foreign keys and triggers all
in place: chain version 2 rows, sealed, through the statement trigger that moves heads, states and
the log queue; bench/seed.py), then times the project's own SQL (app.consents.queries.STATE_AS_OF
and HISTORY, imported, not copied) one query at a time on one connection, and the same two calls
through the running project service over HTTP, each for random subjects.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import asyncpg

from app.consents.queries import HISTORY, STATE_AS_OF
from bench.load import Connection, percentile
from bench.seed import Catalog, seed_parallel, visit_time
from bench.servers import Server

EVENTS_PER_SUBJECT = 10
PREFIX = "big-"
PAGE = 50
P99_TARGET_MS = 10.0
WARM_UP_QUERIES = 20  # prepare and plan each statement before the clock runs


@dataclass(frozen=True)
class Probe:
    subject_index: int
    as_of_visit: int  # the state is read as it was just after this visit

    @property
    def external_id(self) -> str:
        return f"{PREFIX}{self.subject_index}"

    @property
    def as_of(self):
        return visit_time(self.subject_index, self.as_of_visit) + timedelta(hours=1)


def _summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"n": len(ordered), "p50_ms": percentile(ordered, 50) * 1e3, "p99_ms": percentile(ordered, 99) * 1e3,
            "max_ms": ordered[-1] * 1e3}


async def _time_sql(conn: asyncpg.Connection, query: str, args: list[tuple]) -> tuple[dict[str, float], float]:
    latencies, rows = [], 0
    for arguments in args:
        started = time.perf_counter()
        result = await conn.fetch(query, *arguments)
        latencies.append(time.perf_counter() - started)
        rows += len(result)
    return _summary(latencies), rows / len(args)


def _sql_calls(tenant: str) -> dict[str, tuple[str, Callable[[Probe], tuple]]]:
    """Each statement with the arguments app/consents/queries.py passes it (state() and history():
    history asks for limit + 1 rows to know whether there is a next page)."""
    calls = {
        "state as_of": (STATE_AS_OF, lambda p: (tenant, p.external_id, p.as_of)),
        "history page": (HISTORY, lambda p: (tenant, p.external_id, 0, None, PAGE + 1)),
    }
    for name, (query, args) in calls.items():
        expected = len(set(re.findall(r"\$(\d+)", query)))
        if expected != len(args(Probe(0, 0))):
            raise RuntimeError(f"the project's SQL for {name!r} now takes {expected} parameters; "
                               "update bench/big.py to pass what app/consents/queries.py passes")
    return calls


async def _sql(dsn: str, tenant: str, probes: list[Probe], warm: list[Probe]) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn, server_settings={"timezone": "UTC"})
    try:
        results = {}
        for name, (query, args) in _sql_calls(tenant).items():
            await _time_sql(conn, query, [args(p) for p in warm])
            summary, rows = await _time_sql(conn, query, [args(p) for p in probes])
            results[name] = {**summary, "rows_per_call": rows}
        return results
    finally:
        await conn.close()


async def _http(server: Server, headers: dict[str, str], probes: list[Probe], warm: list[Probe]) -> dict[str, Any]:
    calls = {  # name: (path for a probe, key of the reply's list)
        "state as_of": (lambda p: f"/v1/subjects/{p.external_id}/consents?as_of="
                                  f"{p.as_of.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}", "consents"),
        "history page": (lambda p: f"/v1/subjects/{p.external_id}/consents/history?limit={PAGE}", "items"),
    }
    conn = await Connection(server.port).open()

    async def get_all(path: Callable[[Probe], str], key: str, batch: list[Probe]) -> tuple[list[float], int]:
        latencies, rows = [], 0
        for probe in batch:
            seconds, body = await conn.get(path(probe), headers, server.log_tail)
            latencies.append(seconds)
            rows += len(json.loads(body)[key])
        return latencies, rows

    try:
        results = {}
        for name, (path, key) in calls.items():
            await get_all(path, key, warm)
            latencies, rows = await get_all(path, key, probes)
            results[name] = {**_summary(latencies), "rows_per_call": rows / len(probes)}
        return results
    finally:
        conn.close()


def run(dsn: str, catalog: Catalog, server: Server, headers: dict[str, str], events: int,
        samples: int, secret: bytes) -> dict[str, Any]:
    subjects = events // EVENTS_PER_SUBJECT
    workers = os.cpu_count() or 2
    print(f"\nseeding {subjects * EVENTS_PER_SUBJECT:,} events ({subjects:,} subjects x {EVENTS_PER_SUBJECT}) "
          f"with COPY from {workers} processes, through the append trigger ...", flush=True)
    started = time.perf_counter()
    seed_parallel(dsn, catalog, PREFIX, subjects, EVENTS_PER_SUBJECT, workers, secret)
    seeded = time.perf_counter() - started
    started = time.perf_counter()
    stats = asyncio.run(_vacuum_and_count(dsn))
    vacuumed = time.perf_counter() - started
    print(f"  seeded in {seeded:.0f} s; VACUUM ANALYZE in {vacuumed:.0f} s; consent_events holds "
          f"{stats['events']:,} rows, database {stats['size'] / 2**30:.1f} GiB", flush=True)

    visits = math.ceil(EVENTS_PER_SUBJECT / len(catalog.purposes))
    samples = min(samples, subjects // 2 - WARM_UP_QUERIES)  # only matters for a tiny BENCH_EVENTS
    chosen = random.sample(range(subjects), 2 * samples + 2 * WARM_UP_QUERIES)
    probes = [Probe(i, random.randrange(visits)) for i in chosen]
    # disjoint subjects for SQL and HTTP, so the HTTP pass does not read pages the SQL pass just cached
    sql_probes, http_probes = probes[:samples], probes[samples:2 * samples]
    sql_warm, http_warm = probes[2 * samples:2 * samples + WARM_UP_QUERIES], probes[2 * samples + WARM_UP_QUERIES:]
    sql = asyncio.run(_sql(dsn, catalog.tenant, sql_probes, sql_warm))
    http = asyncio.run(_http(server, headers, http_probes, http_warm))
    result = {"events": stats["events"], "subjects": subjects, "seed_seconds": seeded, "vacuum_seconds": vacuumed,
              "database_bytes": stats["size"], "sql": sql, "http": http}
    _print(result)
    return result


async def _vacuum_and_count(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        # VACUUM as well as ANALYZE: a table that has been live for a while has its hint bits and
        # visibility map set; a freshly COPYed one would pay for setting them on the first reads.
        await conn.execute("VACUUM (ANALYZE) subjects, consent_evidence, consent_events, consent_states, "
                           "ledger_log_queue")
        return {"events": await conn.fetchval("SELECT count(*) FROM consent_events"),
                "size": await conn.fetchval("SELECT pg_database_size(current_database())")}
    finally:
        await conn.close()


def _print(result: dict[str, Any]) -> None:
    print(f"\nread latency with {result['events']:,} events, one call at a time, random subjects "
          f"(target p99 <= {P99_TARGET_MS:g} ms)")
    print(f"  {'call':<14} {'via':<5} {'n':>5} {'rows/call':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  target")
    for via in ("sql", "http"):
        for name, figures in result[via].items():
            verdict = "PASS" if figures["p99_ms"] <= P99_TARGET_MS else "FAIL"
            print(f"  {name:<14} {via.upper():<5} {figures['n']:>5} {figures['rows_per_call']:>9.1f} "
                  f"{figures['p50_ms']:>8.2f} {figures['p99_ms']:>8.2f} {figures['max_ms']:>8.2f}  {verdict}")
    print("  SQL = the project's STATE_AS_OF / HISTORY text on one asyncpg connection (client-side time);\n"
          "  HTTP = the project service, JWT and all, over one keep-alive connection.", flush=True)
