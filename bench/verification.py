"""Tenant-wide verification at scale (issue 11 point 4): events verified per second by a run, beside
a raw baseline in the same run. Not part of `make test`; prints figures, asserts nothing.

    .venv/bin/python -m bench.verification --events 1000000 [--jobs 1,2] [--per-subject 6] [--keep DIR]

--keep DIR seeds once into DIR (its own embedded PostgreSQL, left stopped) and measures the same
database again on the next call with the same DIR (--events and --per-subject are then those of
the first call): 5,000,000 events take some ten minutes to seed.

On an embedded PostgreSQL of its own: the demo catalog, then subjects of --per-subject events each
seeded with the project's own hashes, commitments and seals through the append trigger
(bench/seed.py, documents=True: the rows verify), a signed checkpoint over all of them (the
service's own checkpointer code), VACUUM ANALYZE. Then, for each --jobs value, one whole run as
the worker carries it (app/audit/verify_job.py `carry_on`, runtime role, batches of 1,000 subjects,
then the log against the checkpoint), and the baseline: the same events read in one pass from a
server-side cursor and each row hashed with hashlib (no project code, one process): the cost of
reading and touching every event once, which the run cannot beat by much. The ratio is
baseline time / project time (1.0: as fast as merely reading and hashing).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import pickle
import resource
import shutil
import tempfile
import time
from pathlib import Path

import asyncpg

from app.audit import verify_job
from app.core.db import connect
from app.core.embedded_pg import EmbeddedPostgres, free_port
from app.core.settings import Settings
from app.proof import keys
from app.proof import log as proof_log
from app.proof.context import Proof
from bench import database, servers
from bench import kept as kept_db
from bench.seed import seed_parallel

TENANT = "bench-verify"
TARGET_EVENTS, TARGET_SECONDS = 5_000_000, 120.0


async def _baseline(dsn: str) -> tuple[int, float]:
    """Every event of the tenant read once and hashed: the floor under any verification."""
    conn = await asyncpg.connect(dsn)
    try:
        started, n = time.perf_counter(), 0
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            async for row in conn.cursor("SELECT * FROM consent_events WHERE tenant_id = $1", TENANT, prefetch=5000):
                hashlib.sha256("|".join(map(str, row.values())).encode()).hexdigest()
                n += 1
        return n, time.perf_counter() - started
    finally:
        await conn.close()


async def _checkpoint(runtime: str, proof: Proof) -> int:
    conn = await asyncpg.connect(runtime)
    try:
        made = await proof_log.make_checkpoint(conn, TENANT, proof)
        return made["tree_size"] if made else 0
    finally:
        await conn.close()


async def _vacuum(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return sum(u.ru_utime + u.ru_stime for u in usage)


def _postgres_seconds(pgdata: Path) -> float:
    """CPU of the postmaster, its live children and (cutime, cstime) the children it has reaped:
    every backend's work, the ones that came and went during the run included."""
    tick = os.sysconf("SC_CLK_TCK")
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry.name), int(fields[1])
        if pid == postmaster:
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        elif ppid == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / tick


async def _run(settings: Settings, proof: Proof, jobs: int) -> dict:
    conn = await connect(settings.database_url, settings, "bench-verify")
    try:
        run, _ = await verify_job.start(conn, TENANT, "bench", settings.verification_batch_subjects)
        started = time.perf_counter()
        await verify_job.carry_on(conn, settings, proof, owner="bench", tenant=TENANT, jobs=jobs)
        seconds = time.perf_counter() - started
        row = await conn.fetchrow("SELECT * FROM verification_runs WHERE id = $1", run["id"])
        return {"seconds": seconds, "events": row["events_done"], "subjects": row["subjects_done"],
                "valid": row["valid"], "broken": row["broken_total"], "log": row["log"]}
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.verification", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--per-subject", type=int, default=6)
    parser.add_argument("--keep", metavar="DIR", help="seed once into DIR and measure it again on later calls")
    parser.add_argument("--jobs", default="1,2", help="worker process counts to time, comma-separated (1: none)")
    args = parser.parse_args(argv)
    kept = Path(args.keep) if args.keep else None
    if kept:
        kept.mkdir(parents=True, exist_ok=True)
    work = kept or Path(tempfile.mkdtemp(prefix="cl-bench-verify-"))
    pg = kept_db.server(kept) if kept else EmbeddedPostgres(work / "pg", free_port(), fast_unsafe=True).start()
    seeded = kept is not None and (kept / "state.pickle").exists()
    try:
        env = servers.proof_keys(work)
        if seeded:
            url, runtime_url = kept_db.login(pg, pickle.loads((kept / "state.pickle").read_bytes())["database"])
            dsn, runtime = database.dsn(url), database.dsn(runtime_url)
            print(f"kept database in {kept}", flush=True)
        else:
            url = database.create(pg.url)
            dsn, runtime = database.dsn(url), database.dsn(database.runtime_url(url))
        secret = keys.load_secret(Path(env["LEDGER_SECRET_FILE"]), None)
        settings = Settings(database_url=runtime, signing_key_file=Path(env["SIGNING_KEY_FILE"]),
                            ledger_secret_file=Path(env["LEDGER_SECRET_FILE"]))
        proof = Proof.from_settings(settings)
        if not seeded:
            catalog = asyncio.run(database.load_catalog(url, TENANT))
            subjects = args.events // args.per_subject
            t = time.perf_counter()
            seed_parallel(dsn, catalog, "v-", subjects, args.per_subject, os.cpu_count() or 2, secret,
                          documents=True)
            print(f"seeded {subjects:,} subjects x {args.per_subject} events in {time.perf_counter() - t:.0f} s",
                  flush=True)
            t = time.perf_counter()
            size = asyncio.run(_checkpoint(runtime, proof))
            asyncio.run(_vacuum(dsn))
            print(f"checkpoint of {size:,} leaves signed, VACUUM ANALYZE: {time.perf_counter() - t:.0f} s", flush=True)
            if kept:
                (kept / "state.pickle").write_bytes(pickle.dumps({"database": url.rsplit("/", 1)[1]}))
        cpu, pg_cpu = _cpu_seconds(), _postgres_seconds(pg.pgdata)
        n, base = asyncio.run(_baseline(dsn))
        cpu, pg_cpu = _cpu_seconds() - cpu, _postgres_seconds(pg.pgdata) - pg_cpu
        print(f"  baseline CPU per event: Python {cpu / n * 1e6:.0f} us, PostgreSQL {pg_cpu / n * 1e6:.0f} us",
              flush=True)
        print(f"baseline: {n:,} events read and hashed in {base:.1f} s ({n / base:,.0f} events/s)", flush=True)
        for jobs in (int(j) for j in args.jobs.split(",")):
            cpu, pg_cpu = _cpu_seconds(), _postgres_seconds(pg.pgdata)
            r = asyncio.run(_run(settings, proof, jobs))
            cpu, pg_cpu = _cpu_seconds() - cpu, _postgres_seconds(pg.pgdata) - pg_cpu
            per = 1e6 / r["events"]
            rate = r["events"] / r["seconds"]
            print(f"project, jobs {jobs}: {r['events']:,} events of {r['subjects']:,} subjects in {r['seconds']:.1f} s "
                  f"({rate:,.0f} events/s; valid {r['valid']}, {r['broken']} broken); baseline/project "
                  f"{base / r['seconds']:.2f}; at this rate {TARGET_EVENTS:,} events take "
                  f"{TARGET_EVENTS / rate:.0f} s (target {TARGET_SECONDS:.0f} s; load {os.getloadavg()[0]:.1f})",
                  flush=True)
            print(f"  CPU per event: Python {cpu * per:.0f} us (this process and its workers), PostgreSQL "
                  f"{pg_cpu * per:.0f} us: on {os.cpu_count()} idle cores at most "
                  f"{(os.cpu_count() or 1) / ((cpu + pg_cpu) * per) * 1e6:,.0f} events/s", flush=True)
    finally:
        pg.stop(mode="fast" if kept else "immediate")
        if not kept:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
