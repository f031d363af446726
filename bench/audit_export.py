"""Issue 11 point 2 at scale: `GET /v1/audit/export` end to end, against its ceiling in the same run.

Each export is fetched by curl (C: decoding the chunked reply costs the measuring side little)
into a pipe this process reads, counting lines (gzip replies are inflated here first, so the count
is checked too); rate = events / (request sent .. last byte). Meanwhile a thread samples the
service process's resident memory (/proc/PID/status VmRSS) every 20 ms: the peak during an export
against the size before it shows whether memory grows with the export's size.

Sizes: the oldest EXPORT_SMALL events of the tenant (a recorded-time range) and the whole tenant.
The ceiling is a plain `COPY (SELECT the same rows, same join and order) TO STDOUT` read through
asyncpg on one connection, at both sizes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg

from bench import database
from bench.servers import Server

EXPORT_SMALL = 1_000_000
TARGET_RATE = 100_000  # events/s
SAMPLE_EVERY = 0.02
READ = 1 << 20
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
CEILING = ("SELECT e.*, s.external_id AS subject_ref FROM consent_events e JOIN subjects s ON s.id = e.subject_id "
           "WHERE e.tenant_id = $1 {where} ORDER BY e.recorded_at, e.id")


def rss(pid: int) -> int:
    """Resident set size of a process, bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class Sampler:
    """The peak RSS of `pid` while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.stop = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            self.stop.wait(SAMPLE_EVERY)

    def __enter__(self) -> "Sampler":
        self.before = rss(self.pid)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, rss(self.pid))


def _fetch(server: Server, headers: dict[str, str], query: dict[str, str], gzip: bool) -> dict[str, Any]:
    url = f"http://127.0.0.1:{server.port}/v1/audit/export?{urlencode(query)}"
    command = ["curl", "-sS", "--fail", "-o", "-", "-H", f"Authorization: {headers['Authorization']}"]
    if gzip:
        command += ["-H", "Accept-Encoding: gzip"]
    inflate = zlib.decompressobj(31) if gzip else None
    lines = wire = size = 0
    with Sampler(server.process.pid) as memory:
        started = time.perf_counter()
        with subprocess.Popen([*command, url], stdout=subprocess.PIPE) as curl:
            fd = curl.stdout.fileno()
            while chunk := os.read(fd, READ):
                wire += len(chunk)
                if inflate:
                    chunk = inflate.decompress(chunk)
                size += len(chunk)
                lines += chunk.count(b"\n")
            code = curl.wait()
        seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"curl {url} exited with {code}\n{server.name} log:\n{server.log_tail()}")
    return {"lines": lines, "seconds": seconds, "bytes": size, "wire_bytes": wire,
            "rss_before": memory.before, "rss_peak": memory.peak}


async def _ceiling(dsn: str, tenant: str, recorded_to: Any | None) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        lines = size = 0

        async def sink(data: bytes) -> None:
            nonlocal lines, size
            lines += data.count(b"\n")
            size += len(data)

        args = [tenant] + ([recorded_to] if recorded_to else [])
        query = CEILING.format(where="AND e.recorded_at < $2" if recorded_to else "")
        started = time.perf_counter()
        await conn.copy_from_query(query, *args, output=sink)
        return {"lines": lines, "seconds": time.perf_counter() - started, "bytes": size}
    finally:
        await conn.close()


async def _small_range(dsn: str, tenant: str, events: int) -> tuple[Any, int, int]:
    """The recorded time before which the tenant holds about `events` events, and their exact count."""
    conn = await asyncpg.connect(dsn)
    try:
        until = await conn.fetchval("SELECT recorded_at FROM consent_events WHERE tenant_id = $1 "
                                    "ORDER BY recorded_at, id OFFSET $2 LIMIT 1", tenant, events)
        total = await conn.fetchval("SELECT count(*) FROM consent_events WHERE tenant_id = $1", tenant)
        if until is None:  # a small tenant: all of it
            return None, total, total
        count = await conn.fetchval("SELECT count(*) FROM consent_events WHERE tenant_id = $1 AND recorded_at < $2",
                                    tenant, until)
        return until, count, total
    finally:
        await conn.close()


def run(dsn: str, tenant: str, server: Server, headers: dict[str, str], full_formats: list[str]) -> dict[str, Any]:
    """Every format at the small size; `full_formats` (e.g. ["ndjson"]) also over the whole tenant."""
    dsn = database.dsn(dsn)
    until, small, total = asyncio.run(_small_range(dsn, tenant, EXPORT_SMALL))
    before = f" (recorded before {until:{TIME_FORMAT}})" if until else ""
    print(f"\nauditors' export: {small:,} events{before} in every format, "
          f"the whole tenant ({total:,}) as {', '.join(full_formats) or 'nothing'}; curl as the client",
          flush=True)
    sizes = {"small": ({"recorded_to": until.strftime(TIME_FORMAT)} if until else {}, small, until),
             "all": ({}, total, None)}
    runs = [(size, fmt, gz) for size in ("small",) for fmt in ("ndjson", "csv") for gz in (False, True)]
    runs += [("all", fmt.removesuffix("+gzip"), fmt.endswith("+gzip")) for fmt in full_formats]
    results: dict[str, Any] = {"ceiling": {}, "exports": []}
    for size in dict.fromkeys(size for size, _, _ in runs):
        query, expected, recorded_to = sizes[size]
        ceiling = asyncio.run(_ceiling(dsn, tenant, recorded_to))
        if ceiling["lines"] != expected:
            raise RuntimeError(f"the ceiling COPY gave {ceiling['lines']} rows, expected {expected}")
        ceiling["rate"] = ceiling["lines"] / ceiling["seconds"]
        results["ceiling"][size] = ceiling
        print(f"  ceiling, COPY TO STDOUT {expected:>11,} rows {ceiling['seconds']:8.1f} s "
              f"{ceiling['rate']:>10,.0f} rows/s", flush=True)
        for _, fmt, gz in (r for r in runs if r[0] == size):
            figures = _fetch(server, headers, {**query, "format": fmt}, gz)
            events = figures["lines"] - (1 if fmt == "csv" else 0)
            if events != expected:
                raise RuntimeError(f"export {fmt}{' gzip' if gz else ''} gave {events} events, expected {expected}")
            row = {"size": size, "format": fmt + ("+gzip" if gz else ""), "events": events, **figures,
                   "rate": events / figures["seconds"]}
            row["ratio"] = row["rate"] / ceiling["rate"]
            results["exports"].append(row)
            _print_row(row)
    return results


def _print_row(r: dict[str, Any]) -> None:
    verdict = "PASS" if r["rate"] >= TARGET_RATE else "FAIL"
    print(f"  {r['format']:<12} {r['events']:>11,} events {r['seconds']:8.1f} s {r['rate']:>10,.0f} events/s "
          f"x{r['ratio']:.2f} of COPY  {r['wire_bytes'] / 2**20:>8,.0f} MiB sent  RSS {r['rss_before'] / 2**20:.0f} -> "
          f"peak {r['rss_peak'] / 2**20:.0f} MiB  target >= {TARGET_RATE:,}/s {verdict}", flush=True)
