"""`make bench`: the project's hot calls against a raw FastAPI + asyncpg baseline, then read latency
with millions of events. Not part of the test suite: it prints figures (and keeps them as JSON under
bench/results/, which git ignores).

Everything runs on loopback and cleans up after itself: an embedded PostgreSQL in a temporary
directory, the project service and the baseline (one uvicorn worker each), and the load generator
(wrk if installed, else Python processes).

    python -m bench.run          both parts (the second is skipped with BENCH_SKIP_BIG=1)
    python -m bench.run --big    only the second part

Environment: BENCH_SECONDS (seconds per measured run, 10), BENCH_WARMUP (2), BENCH_ROUNDS (measured runs
per service and scenario, alternating, best reported, 2), BENCH_CONNECTIONS (32),
BENCH_EVENTS (events seeded for the second part, 5000000), BENCH_SAMPLES (subjects timed, 2000),
BENCH_LOADGEN=python (use the Python generator even when wrk is installed), BENCH_SKIP_AUDIENCE=1 (skip the
campaign audience check, bench/audience.py; BENCH_AUDIENCE ids, 100000), BENCH_SKIP_DUTIES=1 (skip the duty
scheduler at 5M duties, bench/duties.py), BENCH_SKIP_AUDIT=1 (skip the auditors' search and export at
BENCH_EVENTS, bench/audit_search.py and bench/audit_export.py; BENCH_AUDIT_WALKS walks per filter and side, 50;
BENCH_AUDIT_FULL formats exported over the whole tenant, ndjson), BENCH_SKIP_PARTITION=1 (skip the write path
on consent_events partitioned by hash of subject, bench/partitioned.py), BENCH_DURABLE=1 (run
PostgreSQL with fsync and synchronous commit on; by default they are off), BASELINE_EVENT_STATEMENTS=each
(the baseline inserts a call's events one statement each instead of in one).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app.auth.tokens import issue
from app.consents.verification import verify
from app.core.db import create_pool
from app.core.embedded_pg import EmbeddedPostgres, free_port
from app.core.settings import Settings
from app.proof import keys
from bench import audience, audit_export, audit_search, big, database, duties, log_proofs, partitioned, servers
from bench.load import Result, Scenario, generator_name, run_load
from bench.seed import Catalog, seed_parallel

PROJECT_TENANT = "bench-project"
BASELINE_TENANT = "bench-raw"
# Pool of the baseline = the project's ledger pool (DB_POOL_SIZE 24 less the catalog's 4).
BASELINE_POOL = 20
SEEDED_SUBJECTS = 2_000
SEEDED_EVENTS = 60  # more than one page of 50, so every history read returns a full page
# project req/s >= this x baseline: reads are what processors call before every ad, so they aim higher
THROUGHPUT_TARGET = {"write": 0.7, "read": 0.8}
P99_TARGET = 1.5  # project p99 <= 1.5 x baseline, writes and reads
TIME_LIMIT = 60 * 60  # hard stop for the whole run, whatever hangs (longer for more than 5M events: below)
RESULTS = Path(__file__).with_name("results")


@dataclass(frozen=True)
class Config:
    seconds: int
    warmup: int
    rounds: int
    connections: int
    events: int
    samples: int
    compare: bool
    big: bool
    durable: bool
    generator: str
    baseline_events: str  # "one" INSERT for a call's events, or "each" event its own (BASELINE_EVENT_STATEMENTS)

    @classmethod
    def load(cls, only_big: bool) -> "Config":
        env = os.environ
        return cls(
            seconds=int(env.get("BENCH_SECONDS", "10")), warmup=int(env.get("BENCH_WARMUP", "2")),
            rounds=int(env.get("BENCH_ROUNDS", "2")),
            connections=int(env.get("BENCH_CONNECTIONS", "32")), events=int(env.get("BENCH_EVENTS", "5000000")),
            samples=int(env.get("BENCH_SAMPLES", "2000")), compare=not only_big,
            big=only_big or env.get("BENCH_SKIP_BIG") != "1", durable=env.get("BENCH_DURABLE") == "1",
            generator="python" if env.get("BENCH_LOADGEN") == "python" else generator_name(),
            baseline_events="each" if env.get("BASELINE_EVENT_STATEMENTS") == "each" else "one",
        )


def _abort(signum: int, _frame: Any) -> None:
    """SIGTERM and the overall time limit unwind through the finally blocks, which stop everything."""
    reason = "time limit reached" if signum == signal.SIGALRM else f"signal {signal.Signals(signum).name}"
    raise SystemExit(f"bench: stopped ({reason})")


# membership is processed for the contract (PIPA Art. 15(1)4): acknowledged, not granted (docs/legal-model.md)
DECISIONS = {"membership": "acknowledged", "marketing-sms": "granted", "marketing-email": "refused"}


def _scenarios(catalog: Catalog) -> list[Scenario]:
    # every decision echoes the disclosure_hash the form showed for its purpose, as the project requires
    shown = {key: disclosure_hash for _, key, disclosure_hash in catalog.purposes}
    body = {
        "collection_point": database.POINT, "notice_id": str(catalog.notice_id),
        "decisions": [{"purpose": purpose, "decision": decision, "disclosure_hash": shown[purpose]}
                      for purpose, decision in DECISIONS.items()],
    }
    return [
        Scenario("record 3 decisions", "POST", "/v1/subjects/", "/consents", fresh=True,
                 body=json.dumps(body, separators=(",", ":")).encode()),
        Scenario("read current state", "GET", "/v1/subjects/", "/consents", fresh=False),
        Scenario("read history page", "GET", "/v1/subjects/", "/consents/history?limit=50", fresh=False),
    ]


def _check(server: servers.Server, scenario: Scenario, headers: dict[str, str], subject: str | None = None) -> int:
    """One request before the load, so a broken setup fails loudly instead of timing errors."""
    subject = subject or ("check-0" if scenario.fresh else "seed-0")
    response = httpx.request(scenario.method, f"http://127.0.0.1:{server.port}{scenario.path(subject)}",
                             headers=headers, content=scenario.body or None, timeout=10)
    if response.status_code not in (200, 201):
        raise RuntimeError(f"{scenario.name} on {server.name} -> {response.status_code}: {response.text[:500]}\n"
                           f"{server.name} log:\n{server.log_tail()}")
    return len(response.content)


def _seed_readers(dsn: str, catalogs: list[Catalog], secret: bytes) -> float:
    """The readers' subjects, as valid chain version 2 rows (document hashes, seals, commitments)
    through the append trigger, from one process per CPU; returns the seconds it took."""
    started = time.perf_counter()
    for catalog in catalogs:
        seed_parallel(dsn, catalog, "seed-", SEEDED_SUBJECTS, SEEDED_EVENTS, os.cpu_count() or 2, secret,
                      documents=True)
    asyncio.run(_vacuum(dsn))
    return time.perf_counter() - started


async def _vacuum(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM (ANALYZE) subjects, consent_evidence, consent_events, consent_states, "
                           "ledger_log_queue")
    finally:
        await conn.close()


# What one record call left behind, per table, for a subject of each side: both must write alike.
WRITTEN = """
SELECT (SELECT count(*) FROM consent_evidence WHERE subject_id = s.id) AS evidence,
       (SELECT count(*) FROM consent_events WHERE subject_id = s.id) AS events,
       (SELECT count(*) FROM consent_states WHERE subject_id = s.id) AS states,
       (SELECT count(*) FROM receipts WHERE subject_id = s.id) AS receipts,
       (SELECT count(*) FROM ledger_log_queue WHERE subject_id = s.id) AS queued,
       (SELECT count(*) FROM duty_records WHERE subject_id = s.id) AS duty_records,
       (SELECT array_agg(DISTINCT k ORDER BY k) FROM consent_events e, jsonb_each(to_jsonb(e)) AS j(k, v)
        WHERE e.subject_id = s.id AND v <> 'null'::jsonb) AS event_columns_set
FROM subjects s WHERE s.tenant_id = $1 AND s.external_id = $2
"""


async def _check_written(url: str, secret: bytes, tenants: dict[str, str], subject: str) -> None:
    """After one POST on each side: the same tables hold the same number of rows with the same event
    columns set, and the project's own verify finds both subjects' chains valid (hashes, seals,
    commitments, state fold, log queue)."""
    pool = await create_pool(url, Settings(database_url=url))
    try:
        written = {}
        for target, tenant in tenants.items():
            row = await pool.fetchrow(WRITTEN, tenant, subject)
            report = await verify(pool, tenant, subject, secret)
            if not report["valid"]:
                raise RuntimeError(f"{target}'s {subject} does not verify: {report['breaks'][:3]}")
            written[target] = dict(row)
        if len({json.dumps(w, sort_keys=True) for w in written.values()}) != 1:
            raise RuntimeError(f"the two services wrote different rows for one record call: {written}")
        w = next(iter(written.values()))
        print(f"one record call, both sides: {w['evidence']} evidence, {w['events']} events, {w['states']} states, "
              f"{w['receipts']} receipt, {w['duty_records']} duty records, {w['queued']} queued for the log; "
              "both verify", flush=True)
    finally:
        await pool.close()


def compare(config: Config, targets: dict[str, tuple[servers.Server, Catalog]], headers: dict[str, str],
            ) -> list[dict]:
    """Per scenario: a warm-up run on each service, then `rounds` measured runs alternating between
    them. The best round (most req/s) of each side is reported: on a shared 2-core machine noise
    only ever slows a run down, and alternating keeps a slow spell from hitting one side only."""
    scenarios = {target: _scenarios(catalog) for target, (_, catalog) in targets.items()}
    runs = itertools.count(1)

    def load(server: servers.Server, scenario: Scenario, seconds: int) -> Result:
        return run_load(config.generator, server.port, scenario, headers, seconds, config.connections,
                        tag=f"r{next(runs)}", seeded=SEEDED_SUBJECTS)  # tags keep fresh subjects unique

    rows = []
    for same in zip(*scenarios.values()):  # one scenario, as built for each target
        row: dict[str, Any] = {"scenario": same[0].name, "write": same[0].fresh}
        sides = [(target, server, scenario) for (target, (server, _)), scenario in zip(targets.items(), same)]
        for target, server, scenario in sides:
            row[f"{target}_reply_bytes"] = _check(server, scenario, headers)
            load(server, scenario, config.warmup)
        rounds: dict[str, list[Result]] = {target: [] for target in targets}
        for _ in range(config.rounds):
            for target, server, scenario in sides:
                result = load(server, scenario, config.seconds)
                rounds[target].append(result)
                print(f"  {scenario.name:<20} {target:<8} {result.rps:8.1f} req/s  p50 {result.p50_ms:7.2f} ms  "
                      f"p99 {result.p99_ms:7.2f} ms  failures {result.failures}", flush=True)
        for target, results in rounds.items():
            best = max(results, key=lambda r: r.rps)
            row[target] = {**asdict(best), "rps": best.rps, "rounds": [{**asdict(r), "rps": r.rps} for r in results]}
        row["throughput_ratio"] = row["project"]["rps"] / row["baseline"]["rps"]
        row["p99_ratio"] = row["project"]["p99_ms"] / row["baseline"]["p99_ms"]
        rows.append(row)
    _print_table(rows)
    return rows


def _print_table(rows: list[dict]) -> None:
    print("\nbest round of each side")
    print(f"{'scenario':<20} | {'project':^27} | {'baseline':^27} | {'throughput':^16} | {'p99':^16}")
    print(f"{'':<20} | {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} | {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} | "
          f"{'ratio (w/r >=0.7/0.8)':>16} | "
          f"{'ratio (<=' + format(P99_TARGET, '.1f') + ')':>16}")
    for row in rows:
        p, b = row["project"], row["baseline"]
        target = THROUGHPUT_TARGET["write" if row["write"] else "read"]
        verdict = "PASS" if row["throughput_ratio"] >= target else "FAIL"
        throughput = f"{row['throughput_ratio']:.2f} {verdict}"
        p99 = f"{row['p99_ratio']:.2f} " + ("PASS" if row["p99_ratio"] <= P99_TARGET else "FAIL")
        print(f"{row['scenario']:<20} | {p['rps']:>9.1f} {p['p50_ms']:>8.2f} {p['p99_ms']:>8.2f} | "
              f"{b['rps']:>9.1f} {b['p50_ms']:>8.2f} {b['p99_ms']:>8.2f} | {throughput:>16} | {p99:>16}")
        if p["failures"] or b["failures"]:
            print(f"{'':<20}   WARNING: failed requests: project {p['failures']}, baseline {b['failures']}")
    print("reply sizes (bytes, project / baseline): " + ", ".join(
        f"{r['scenario']} {r['project_reply_bytes']} / {r['baseline_reply_bytes']}" for r in rows), flush=True)


def _revision() -> str:
    """The code measured: commit, and whether the work tree had uncommitted changes."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=servers.ROOT, capture_output=True,
                              text=True, timeout=10)
    except OSError:
        return "unknown (no git)"
    return done.stdout.strip() or "unknown"


def _header(config: Config) -> None:
    print(f"consent-ledger bench at {_revision()}, {datetime.now().astimezone():%Y-%m-%d %H:%M %Z} "
          f"on {platform.node()}: "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f} "
          "(anything else running shares the CPUs with the services)")
    durability = ("durable (fsync and synchronous_commit on)" if config.durable
                  else "fast_unsafe=True (fsync, synchronous_commit and full_page_writes off)")
    print(f"PostgreSQL: embedded, {durability}")
    if config.compare:
        print(f"load: {config.generator}, {config.connections} keep-alive connections, closed loop, "
              f"{config.warmup} s warm-up, then {config.rounds} x {config.seconds} s measured per service, "
              "alternating, best round reported; both services one uvicorn worker")
        print(f"project: app.main:create_app, a JWT (HS256) on every request, pool settings at their defaults;\n"
              f"baseline: bench/baseline_app.py, plain FastAPI + asyncpg pool of {BASELINE_POOL}, no JWT check, "
              f"no catalog lookup per request; both as the runtime role, both writing evidence, sealed chain "
              f"version 2 events and a signed receipt with the same keys (baseline: "
              f"{'one INSERT per event' if config.baseline_events == 'each' else 'one INSERT for the events'});\n"
              f"POSTs carry no Idempotency-Key (neither side stores a replay); "
              f"reads hit {SEEDED_SUBJECTS} seeded subjects of {SEEDED_EVENTS} events each", flush=True)


def audit(dsn: str, catalog: Catalog, server: servers.Server, headers: dict[str, str], subjects: int,
          search: bool = True, export: bool = True) -> dict[str, Any]:
    """Issue 11's search and export on a seeded tenant, its table first put in recorded order."""
    results: dict[str, Any] = {"cluster_seconds": audit_search.cluster_by_time(dsn)}
    if search:
        results["audit_search"] = audit_search.run(dsn, catalog, server, headers, subjects,
                                                   int(os.environ.get("BENCH_AUDIT_WALKS", "50")))
    if export:
        full = [f for f in os.environ.get("BENCH_AUDIT_FULL", "ndjson").split(",") if f]
        results["audit_export"] = audit_export.run(dsn, catalog.tenant, server, headers, full)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big", action="store_true", help="only the second part (read latency at BENCH_EVENTS)")
    config = Config.load(parser.parse_args(argv).big)
    signal.signal(signal.SIGTERM, _abort)
    signal.signal(signal.SIGALRM, _abort)
    signal.alarm(TIME_LIMIT + 5 * 60 * max(0, config.events - 5_000_000) // 1_000_000)  # seeding and export: 5 min a million more
    _header(config)

    results: dict[str, Any] = {"started": datetime.now().astimezone().isoformat(), "config": asdict(config)}
    with ExitStack() as cleanup:  # undone in reverse: services, then PostgreSQL, then the directory
        workdir = Path(tempfile.mkdtemp(prefix="cl-bench-"))
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        pg = EmbeddedPostgres(workdir / "pg", free_port(), fast_unsafe=not config.durable)
        cleanup.callback(pg.stop, "immediate")
        pg.start()
        url = database.create(pg.url)
        dsn = database.dsn(url)
        proof_env = servers.proof_keys(workdir)  # the same keys for both services and the seeded rows
        secret = keys.load_secret(Path(proof_env["LEDGER_SECRET_FILE"]), None)
        catalogs = {"project": asyncio.run(database.load_catalog(url, PROJECT_TENANT))}
        if config.compare:
            catalogs["baseline"] = asyncio.run(database.load_catalog(url, BASELINE_TENANT))
            seeded = _seed_readers(dsn, list(catalogs.values()), secret)
            print(f"seeded {len(catalogs) * SEEDED_SUBJECTS:,} readers' subjects x {SEEDED_EVENTS} events "
                  f"(chain version 2, through the append trigger) in {seeded:.0f} s", flush=True)
            results["seed_readers_seconds"] = seeded

        settings = Settings(database_url=url, jwt_secret=secrets.token_urlsafe(32), jwt_issuer="consent-ledger-bench",
                            jwt_audience="consent-ledger")
        token = issue(settings, tenant=PROJECT_TENANT, sub="bench", scopes=["consents:write", "consents:read", "audit:read"],
                      ttl_seconds=3 * TIME_LIMIT)
        # the same headers go to both services, so both parse requests of the same size
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        project_env = {"JWT_SECRET": settings.jwt_secret, "JWT_ISSUER": settings.jwt_issuer,
                       "JWT_AUDIENCE": settings.jwt_audience, **proof_env}
        project = servers.start("project", "app.main:create_app", free_port(), {"DATABASE_URL": url, **project_env},
                                workdir)
        cleanup.callback(project.stop)

        if config.compare:
            baseline = servers.start("baseline", "bench.baseline_app:create_app", free_port(), {
                "DATABASE_URL": dsn, "BASELINE_TENANT": BASELINE_TENANT, "BASELINE_COLLECTION_POINT": database.POINT,
                "BASELINE_POOL_SIZE": str(BASELINE_POOL), **proof_env,
            }, workdir)
            cleanup.callback(baseline.stop)
            for server, catalog in ((project, catalogs["project"]), (baseline, catalogs["baseline"])):
                _check(server, _scenarios(catalog)[0], headers, subject="alike-0")
            asyncio.run(_check_written(url, secret, {"project": PROJECT_TENANT, "baseline": BASELINE_TENANT},
                                       "alike-0"))
            print("\nproject vs baseline, every measured round:", flush=True)
            results["compare"] = compare(config, {"project": (project, catalogs["project"]),
                                                  "baseline": (baseline, catalogs["baseline"])}, headers)
            baseline.stop()  # idle from here on; its pool connections need not linger during seeding
        if os.environ.get("BENCH_SKIP_AUDIENCE") != "1" and config.compare:
            results["audience"] = audience.run(url, project, workdir, secret,
                                               (settings.jwt_secret, settings.jwt_issuer, settings.jwt_audience))
        if os.environ.get("BENCH_SKIP_DUTIES") != "1" and config.compare:
            results["duties"] = duties.run(database.create(pg.url), secret)
        if os.environ.get("BENCH_SKIP_PARTITION") != "1" and config.compare:
            results["partitioned"] = partitioned.run(
                pg.url, PROJECT_TENANT, lambda catalog: _scenarios(catalog)[0], project_env, headers, workdir, _check,
                config.generator, config.seconds, config.warmup, config.rounds, config.connections, secret)
        if config.big:
            results["big"] = big.run(dsn, catalogs["project"], project, headers, config.events, config.samples,
                                     secret)
            results["log"] = log_proofs.run(database.dsn(database.runtime_url(url)), PROJECT_TENANT, project, headers,
                                            proof_env, config.samples, owner_dsn=dsn)
            if os.environ.get("BENCH_SKIP_AUDIT") != "1":
                results.update(audit(dsn, catalogs["project"], project, headers,
                                     config.events // big.EVENTS_PER_SUBJECT))

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nfigures saved to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
