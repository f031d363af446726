"""`make bench-webhooks`: how fast webhook workers drain a backlog, and how soon a committed consent
change reaches a receiver. Not part of the test suite: it prints figures and asserts nothing.

All on 127.0.0.1, all stopped here even on error or Ctrl-C: an embedded PostgreSQL (with
pg_stat_statements), the API (one uvicorn worker), a lean HTTP/1.1 receiver in its own process
(`--receiver`: answers 200 at once, checks no signature, keeps webhook-id and time.time() of each
request) and `python -m app.cli worker` processes. One endpoint (kind marketing, purpose
marketing-sms) on the smallticket demo catalog, so each change is one delivery: a sign-up on the
demo `signup` form granting marketing-sms, or that subject's withdrawal of marketing-sms.

1. Raw ceiling: httpx.AsyncClient, set up as the worker's, POSTs the first backlog's bodies with
   same-size webhook-* headers, as many in flight as one worker may send to one endpoint
   (WEBHOOK_CONCURRENCY capped by WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT); also at 8 and at
   WEBHOOK_CONCURRENCY, to compare.
2. Throughput: BENCH_WEBHOOK_CHANGES changes through the API while no worker runs, then 1 worker
   process starts; n / (last - first receipt) and n / (last receipt - worker start). Again on a
   fresh backlog with 2 workers. The tables are ANALYZEd before the workers start, as autovacuum
   would have on a database with history (BENCH_WEBHOOK_ANALYZE=0 skips it). Also printed, per
   delivery: worker CPU, the workers' SQL time in PostgreSQL (pg_stat_statements), and the median
   send time the worker logged.
3. Latency: 1 worker running, BENCH_WEBHOOK_RATE changes/s for BENCH_WEBHOOK_SECONDS from 8 lanes
   (fresh subjects: sign-up, then withdrawal); per message, first receipt time minus
   webhook_messages.created_at (clock_timestamp() in the consent's transaction): p50, p99, max.
Each phase checks that every message in the database reached the receiver, and counts repeats.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app.auth.tokens import issue
from app.core.embedded_pg import EmbeddedPostgres, free_port
from app.core.settings import Settings
from app.webhooks.sender import USER_AGENT
from bench import database, servers
from bench.load import percentile
from bench.run import RESULTS, _abort

TENANT, PURPOSE = "bench-hooks", "marketing-sms"
TIME_LIMIT = 10 * 60  # hard stop, whatever hangs
THROUGHPUT_TARGET, P50_TARGET_MS = 500.0, 100.0  # one worker's deliveries/s; commit to receipt
BACKLOG_CLIENTS, LATENCY_LANES, RAW_LOW = 16, 8, 8
CHANGES = int(os.environ.get("BENCH_WEBHOOK_CHANGES", "6000"))
RATE = float(os.environ.get("BENCH_WEBHOOK_RATE", "80"))
SECONDS = float(os.environ.get("BENCH_WEBHOOK_SECONDS", "15"))
ANALYZE = os.environ.get("BENCH_WEBHOOK_ANALYZE", "1") == "1"  # 0: the workers meet tables with no statistics
CONCURRENCY = Settings.from_env().webhook_concurrency  # the workers read the same environment
# what one worker can have in flight to our single endpoint
IN_FLIGHT = min(CONCURRENCY, getattr(Settings.from_env(), "webhook_max_in_flight_per_endpoint", CONCURRENCY))
WORKER_SQL = """
SELECT CASE WHEN query LIKE '%SKIP LOCKED%' THEN 'claim' WHEN query LIKE '%webhook_attempts%' THEN 'record'
            ELSE 'other' END AS what, sum(calls)::int AS calls, sum(total_exec_time) AS ms
FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%' GROUP BY 1
"""


async def receive(port: int) -> None:
    """POST: 200, keeping (webhook-id, receipt time). GET /count: {distinct, total}; GET /dump?from=K:
    [[id, time], ...] from the K-th request on."""
    ids: list[str] = []
    times = array.array("d")
    distinct: set[str] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
                length, webhook_id = 0, ""
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if (name := name.strip().lower()) == b"content-length":
                        length = int(value)
                    elif name == b"webhook-id":
                        webhook_id = value.strip().decode()
                if length:
                    await reader.readexactly(length)
                if lines[0].startswith(b"GET /count"):
                    body = json.dumps({"distinct": len(distinct), "total": len(ids)}).encode()
                elif lines[0].startswith(b"GET /dump"):
                    start = int(lines[0].split(b" ")[1].partition(b"from=")[2] or 0)
                    body = json.dumps(list(zip(ids[start:], times[start:]))).encode()
                else:
                    times.append(time.time())
                    ids.append(webhook_id)
                    distinct.add(webhook_id)
                    body = b"ok"
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async with await asyncio.start_server(serve, "127.0.0.1", port, backlog=1024) as server:
        await server.serve_forever()


class Sink:
    """The bench's side of the receiver process."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/hooks"
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)

    async def count(self) -> dict[str, int]:
        return (await self.http.get("/count")).json()

    async def wait(self, distinct: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while (await self.count())["distinct"] < distinct:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def dump(self, start: int) -> list[tuple[str, float]]:
        return [tuple(item) for item in (await self.http.get(f"/dump?from={start}")).json()]


def start_process(name: str, command: list[str], env: dict[str, str], workdir: Path) -> servers.Server:
    with (workdir / f"{name}.log").open("wb") as out:
        process = subprocess.Popen(command, cwd=servers.ROOT, env={**os.environ, **env}, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return servers.Server(name, 0, process, workdir / f"{name}.log")


class Api:
    def __init__(self, client: httpx.AsyncClient, form: dict[str, Any]) -> None:
        self.client = client
        decisions = []  # required purposes and marketing-sms granted, the rest refused
        for p in form["purposes"]:
            granted = p["required"] or p["key"] == PURPOSE
            decisions.append({"purpose": p["key"], "decision": "granted" if granted else "refused",
                              "disclosure_hash": p["disclosure_hash"]})
        self.signup = {"collection_point": form["collection_point"], "notice_id": form["notice"]["id"],
                       "decisions": decisions}

    async def change(self, subject: str, grant: bool) -> None:
        path = f"/v1/subjects/{subject}/consents" + ("" if grant else f"/{PURPOSE}/withdraw")
        response = await self.client.post(path, json=self.signup if grant else {})
        if response.status_code not in (200, 201):
            raise RuntimeError(f"POST {path} -> {response.status_code}: {response.text[:300]}")

    async def backlog(self, prefix: str) -> float:
        """CHANGES/2 subjects, each signed up then withdrawn, from BACKLOG_CLIENTS clients."""
        subjects, started = iter(range(CHANGES // 2)), time.perf_counter()

        async def client() -> None:
            for i in subjects:
                await self.change(f"{prefix}{i}", True)
                await self.change(f"{prefix}{i}", False)

        await asyncio.gather(*(client() for _ in range(BACKLOG_CLIENTS)))
        return CHANGES / (time.perf_counter() - started)

    async def paced(self, prefix: str, rate: float, seconds: float) -> tuple[int, float]:
        """Change i is due at start + i/rate; lanes take turns, each alternating sign-up and withdrawal."""
        total, start = int(rate * seconds), time.perf_counter() + 0.05

        async def lane(j: int) -> None:
            for k, i in enumerate(range(j, total, LATENCY_LANES)):
                if (delay := start + i / rate - time.perf_counter()) > 0:
                    await asyncio.sleep(delay)
                await self.change(f"{prefix}{j}-{k // 2}", k % 2 == 0)

        await asyncio.gather(*(lane(j) for j in range(LATENCY_LANES)))
        return total, total / (time.perf_counter() - start)


async def raw_ceiling(sink: Sink, bodies: list[str], concurrency: int) -> dict[str, Any]:
    """The same bodies and header sizes through httpx configured as the worker's client."""
    headers = {"webhook-timestamp": str(int(time.time())), "webhook-signature": "v1," + "A" * 44}
    items = iter([(body.encode(), {**headers, "webhook-id": str(uuid.uuid4())}) for body in bodies])
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, headers={"user-agent": USER_AGENT,
                                                         "content-type": "application/json"}) as client:
        async def sender() -> None:
            for body, request_headers in items:
                (await client.post(sink.url, content=body, headers=request_headers)).raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return {"run": f"raw httpx POSTs, {concurrency} in flight", "n": len(bodies), "seconds": seconds,
            "rate": len(bodies) / seconds}


async def messages(db: asyncpg.Connection, prefix: str) -> int:
    return await db.fetchval("SELECT count(*) FROM webhook_messages WHERE subject_ref LIKE $1 || '%'", prefix)


async def check(db: asyncpg.Connection, prefix: str, received: list[tuple[str, float]]) -> dict[str, Any]:
    """This phase's messages (subject ids start with `prefix`) against what the receiver got."""
    rows = await db.fetch("SELECT id::text, extract(epoch FROM created_at)::float8 AS created "
                          "FROM webhook_messages WHERE subject_ref LIKE $1 || '%'", prefix)
    first: dict[str, float] = {}
    for webhook_id, at in received:
        first.setdefault(webhook_id, at)
    created = {r["id"]: r["created"] for r in rows}
    send_p50 = await db.fetchval(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY a.latency_ms) FROM webhook_attempts a "
        "JOIN webhook_deliveries d ON d.id = a.delivery_id JOIN webhook_messages m ON m.id = d.message_id "
        "WHERE m.subject_ref LIKE $1 || '%'", prefix)
    return {"n": len(created), "missing": len(set(created) - set(first)), "dups": len(received) - len(first),
            "strays": len(set(first) - set(created)), "send_p50_ms": send_p50,
            "delays_ms": sorted((first[i] - c) * 1000 for i, c in created.items() if i in first)}


async def drain(db: asyncpg.Connection, workers: list[servers.Server], timeout: float = 15) -> float:
    """Let the workers record their last deliveries, then stop them; returns their CPU seconds."""
    deadline = time.monotonic() + timeout
    while await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    stats = [Path(f"/proc/{w.process.pid}/stat").read_text().rsplit(")", 1)[1].split() for w in workers]
    cpu = sum(int(f[11]) + int(f[12]) for f in stats) / os.sysconf("SC_CLK_TCK")  # utime + stime
    for worker in workers:
        worker.stop()
    return cpu


async def throughput(db: asyncpg.Connection, api: Api, sink: Sink, start_workers, count: int, prefix: str,
                     before_workers=None) -> list[dict]:
    """A backlog for `prefix`, then `count` workers on it; time until the receiver has all of it."""
    rate = await api.backlog(prefix)
    expected = await messages(db, prefix)
    if ANALYZE:  # as autovacuum would have on tables with a history; here they were empty a minute ago
        await db.execute("ANALYZE webhook_deliveries, webhook_messages, webhook_endpoints")
    print(f"  backlog {prefix}: {CHANGES} changes through the API at {rate:.0f}/s, {expected} messages queued"
          f"{', ANALYZEd' if ANALYZE else ''}, no worker running", flush=True)
    rows = await before_workers() if before_workers else []
    mark = await sink.count()
    await db.execute("SELECT pg_stat_statements_reset()")
    started = time.time()
    workers = start_workers(count)
    complete = await sink.wait(mark["distinct"] + expected, timeout=max(60.0, expected / 50))
    cpu = await drain(db, workers)
    sql = {r["what"]: r for r in await db.fetch(WORKER_SQL)}
    received = await sink.dump(mark["total"])
    if not received:
        raise RuntimeError(f"no delivery arrived; worker log:\n{workers[0].log_tail()}")
    result = await check(db, prefix, received)
    n, first, last = result["n"], min(t for _, t in received), max(t for _, t in received)
    label = f"{count} worker{'s' if count > 1 else ''}"
    claim, record = sql.get("claim", {"calls": 0, "ms": 0.0}), sql.get("record", {"calls": 0, "ms": 0.0})
    print(f"  {label}: first receipt {first - started:.2f} s after start{'' if complete else ', INCOMPLETE'}; "
          f"per delivery: worker CPU {cpu / n * 1000:.2f} ms (start-up included), PostgreSQL "
          f"{sum(r['ms'] for r in sql.values()) / n:.2f} ms (claim {claim['calls']} calls x "
          f"{claim['ms'] / max(claim['calls'], 1):.2f} ms, record {record['calls']} x "
          f"{record['ms'] / max(record['calls'], 1):.2f} ms); send p50 {result['send_p50_ms']:.1f} ms", flush=True)
    return rows + [
        {**result, "run": f"{label}, first->last receipt", "seconds": last - first, "rate": n / (last - first),
         "worker_cpu_s": cpu, "sql": {k: dict(v) for k, v in sql.items()}},
        {"run": f"{label}, from worker start", "n": n, "seconds": last - started, "rate": n / (last - started)}]


async def latency(db: asyncpg.Connection, api: Api, sink: Sink, start_workers) -> dict[str, Any]:
    workers = start_workers(1)
    mark = await sink.count()
    await api.paced("warm-", 10, 2)  # the worker is up and listening once these arrived
    if not await sink.wait(mark["distinct"] + await messages(db, "warm-"), timeout=30):
        raise RuntimeError("the worker delivered nothing within 30 s:\n" + workers[0].log_tail())
    mark = await sink.count()
    total, achieved = await api.paced("lat-", RATE, SECONDS)
    await sink.wait(mark["distinct"] + await messages(db, "lat-"), timeout=60)
    await drain(db, workers)
    result = await check(db, "lat-", await sink.dump(mark["total"]))
    delays = result["delays_ms"]
    return {**result, "run": f"latency, 1 worker, {RATE:g} changes/s", "seconds": SECONDS, "rate": achieved,
            "p50": percentile(delays, 50), "p99": percentile(delays, 99), "max": delays[-1]}


def print_table(rows: list[dict[str, Any]]) -> None:
    raw = rows[0]["rate"]
    print(f"\nwebhook delivery to 1 endpoint on loopback; per worker WEBHOOK_CONCURRENCY={CONCURRENCY}, "
          f"at most {IN_FLIGHT} in flight to one endpoint")
    print(f"{'run':<34} {'n':>6} {'s':>7} {'per s':>8} {'x raw':>6} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'max ms':>7} {'missing':>7} {'dups':>5}  target")
    for row in rows:
        target = ""
        if row["run"].startswith("1 worker, first"):
            target = f">= {THROUGHPUT_TARGET:g}/s {'PASS' if row['rate'] >= THROUGHPUT_TARGET else 'FAIL'}"
        if "p50" in row:
            target = f"p50 <= {P50_TARGET_MS:g} ms {'PASS' if row['p50'] <= P50_TARGET_MS else 'FAIL'}"
        cells = " ".join(f"{row[k]:7.1f}" if k in row else " " * 7 for k in ("p50", "p99", "max"))
        ratio = f"{row['rate'] / raw:6.2f}" if "p50" not in row else " " * 6
        print(f"{row['run']:<34} {row['n']:>6} {row['seconds']:7.2f} {row['rate']:8.1f} {ratio} {cells} "
              f"{row.get('missing', ''):>7} {row.get('dups', ''):>5}  {target}")
    print("""
per s: deliveries/s (raw rows: requests/s; latency row: consent changes/s achieved through the API).
first->last: n / (last - first receipt at the receiver); from worker start: n / (last receipt -
start of the worker processes), interpreter start-up included. x raw: over the first row, plain
httpx with the worker's client settings, as many in flight as one worker sends to one endpoint,
and no database: the ceiling for one worker on this machine. Latency: receipt time at the
receiver - webhook_messages.created_at (clock_timestamp() inside the consent's transaction, so
the commit is included). missing: messages in the database the receiver never got (must be 0);
dups: repeated receipts (at-least-once allows them; none expected here). API, PostgreSQL,
receiver, workers and this process share the machine's cores.""")


async def measure(url: str, api_port: int, token: str, workdir: Path, cleanup: ExitStack) -> list[dict]:
    port = free_port()
    receiver = start_process("receiver", [sys.executable, "-m", "bench.webhooks", "--receiver", str(port)], {},
                             workdir)
    cleanup.callback(receiver.stop)
    sink, serial = Sink(port), iter(range(1, 100))
    for _ in range(100):
        try:
            await sink.count()
            break
        except httpx.TransportError:
            await asyncio.sleep(0.1)

    def start_workers(count: int) -> list[servers.Server]:
        env = {**servers.proof_keys(workdir), "DATABASE_URL": url, "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1", "WEBHOOK_CONCURRENCY": str(CONCURRENCY),
               "WORKER_METRICS_PORT": "0"}  # two workers on one host would want the same port
        started = [start_process(f"worker-{next(serial)}", [sys.executable, "-m", "app.cli", "worker"], env, workdir)
                   for _ in range(count)]
        for worker in started:
            cleanup.callback(worker.stop)
        return started

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", headers={"Authorization": f"Bearer {token}"},
                                 timeout=30, limits=httpx.Limits(max_connections=BACKLOG_CLIENTS)) as client:
        response = await client.post("/v1/webhook-endpoints", json={"url": sink.url, "kinds": ["marketing"],
                                                                      "purposes": [PURPOSE]})
        if response.status_code != 201:
            raise RuntimeError(f"endpoint registration -> {response.status_code}: {response.text[:500]}")
        api = Api(client, (await client.get("/v1/collection-points/signup/form")).raise_for_status().json())
        db = await asyncpg.connect(database.dsn(url))
        try:
            await db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

            async def raw() -> list[dict]:  # the first backlog's bodies, before any worker runs
                bodies = [r["body"] for r in await db.fetch(
                    "SELECT body FROM webhook_messages WHERE subject_ref LIKE 'tp1-%'")]
                rows = [await raw_ceiling(sink, bodies, IN_FLIGHT)]  # the ceiling
                for other in sorted({CONCURRENCY, RAW_LOW} - {IN_FLIGHT}):  # httpx's cost per request grows
                    rows.append(await raw_ceiling(sink, bodies[:len(bodies) // 2], other))  # with connections
                return rows

            rows = await throughput(db, api, sink, start_workers, 1, "tp1-", raw)
            rows += await throughput(db, api, sink, start_workers, 2, "tp2-")
            rows.append(await latency(db, api, sink, start_workers))
        finally:
            await db.close()
    return rows


def start_postgres(workdir: Path, cleanup: ExitStack) -> str:
    """Embedded PostgreSQL with pg_stat_statements loaded; returns the bench database's URL."""
    pg = EmbeddedPostgres(workdir / "pg", free_port(), fast_unsafe=os.environ.get("BENCH_DURABLE") != "1")
    cleanup.callback(pg.stop, "immediate")
    pg.start()  # creates the cluster; loading a library takes a restart
    with (pg.pgdata / "postgresql.auto.conf").open("a") as conf:
        conf.write("shared_preload_libraries = 'pg_stat_statements'\n")
    pg.stop()
    pg.start()
    return database.create(pg.url)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--receiver", type=int, metavar="PORT", help=argparse.SUPPRESS)
    if port := parser.parse_args().receiver:
        asyncio.run(receive(port))
        return 0
    signal.signal(signal.SIGTERM, _abort)
    signal.signal(signal.SIGALRM, _abort)
    signal.alarm(TIME_LIMIT)
    print(f"bench-webhooks: {CHANGES} changes per backlog, latency at {RATE:g}/s for {SECONDS:g} s; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    with ExitStack() as cleanup:  # undone in reverse: workers, receiver, API, PostgreSQL, directory
        workdir = Path(tempfile.mkdtemp(prefix="cl-bench-hooks-"))
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        url = start_postgres(workdir, cleanup)
        asyncio.run(database.load_catalog(url, TENANT))
        settings = Settings(database_url=url, jwt_secret=secrets.token_urlsafe(32), jwt_issuer="consent-ledger-bench")
        token = issue(settings, tenant=TENANT, sub="bench", scopes=["consents:write", "webhooks:admin"],
                      ttl_seconds=TIME_LIMIT + 600)
        api_port = free_port()
        api = servers.start("project", "app.main:create_app", api_port, {
            "DATABASE_URL": url, "JWT_SECRET": settings.jwt_secret, "JWT_ISSUER": settings.jwt_issuer,
            "JWT_AUDIENCE": settings.jwt_audience, "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
            **servers.proof_keys(workdir)}, workdir)
        cleanup.callback(api.stop)
        rows = asyncio.run(measure(url, api_port, token, workdir, cleanup))
    print_table(rows)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"webhooks-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps([{k: v for k, v in r.items() if k != "delays_ms"} for r in rows], indent=2))
    print(f"\nfigures saved to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
