"""Issue 11 point 8: what partitioning consent_events by hash of subject would cost the write path
(docs/partitioning.md).

Two fresh databases on the bench's server, both migrated to head with the same catalog: one as
the migrations leave it, one whose consent_events is rebuilt `PARTITION BY HASH (subject_id)` into
PARTITIONS partitions with everything the migrations gave the plain table, read back from the
catalog (so a later migration's index, check or trigger is carried over without editing this
file): columns and defaults, check and foreign-key constraints, indexes, triggers (the statement
trigger that moves heads, states and the log queue, the append-only and no-truncate guards) and the
runtime role's grants. Two differences are forced by PostgreSQL and are the design's: the primary
key becomes (id, subject_id), since a unique constraint on a partitioned table must contain the
partition key; and a CHECK added NOT VALID (ck_consent_events_hash_shape, for rows older than the
check) is added validated, the table being empty. No other table references consent_events by a
foreign key (checked: the rebuild fails if one does), so nothing else has to follow.

Then the project's record-3-decisions scenario runs against one project service on each database,
alternating, best round of each side, as in the comparison; printed: req/s, p50, p99 per side and
the ratios partitioned / plain.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any, Callable

import asyncpg

from app.consents.verification import verify
from app.core import roles
from app.core.db import create_pool
from app.core.embedded_pg import free_port
from app.core.settings import Settings
from bench import database, servers
from bench.load import Result, Scenario, run_load
from bench.seed import Catalog

PARTITIONS = 16
TABLE = "consent_events"


async def _definitions(conn: asyncpg.Connection) -> dict[str, list[str]]:
    """What the migrations gave the plain table, as statements for the new one."""
    referenced = await conn.fetch("SELECT conrelid::regclass::text AS t, conname FROM pg_constraint "
                                  "WHERE confrelid = $1::regclass", TABLE)
    if referenced:
        raise RuntimeError(f"foreign keys reference {TABLE}: {[dict(r) for r in referenced]}; "
                           "the partitioned copy would have to rebuild them on (subject_id, id)")
    constraints = []
    for r in await conn.fetch("SELECT conname, contype::text AS contype, pg_get_constraintdef(oid) AS def FROM pg_constraint "
                              "WHERE conrelid = $1::regclass AND contype IN ('c', 'f', 'p', 'u') ORDER BY conname",
                              TABLE):
        definition = r["def"].removesuffix(" NOT VALID")
        if r["contype"] == "p":
            definition = "PRIMARY KEY (id, subject_id)"
        constraints.append(f'ALTER TABLE {TABLE} ADD CONSTRAINT "{r["conname"]}" {definition}')
    indexes = [r["def"] for r in await conn.fetch(
        "SELECT pg_get_indexdef(i.indexrelid) AS def FROM pg_index i WHERE i.indrelid = $1::regclass "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)", TABLE)]
    triggers = [r["def"] for r in await conn.fetch(
        "SELECT pg_get_triggerdef(oid) AS def FROM pg_trigger WHERE tgrelid = $1::regclass AND NOT tgisinternal",
        TABLE)]
    return {"constraints": constraints, "indexes": indexes, "triggers": triggers}


async def _rebuild(superuser_dsn: str, partitions: int) -> dict[str, Any]:
    conn = await asyncpg.connect(superuser_dsn)
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {roles.OWNER_ROLE}")  # the owner owns what it makes
            if await conn.fetchval(f"SELECT count(*) FROM {TABLE}"):
                raise RuntimeError(f"{TABLE} is not empty; the partitioned copy starts from a fresh database")
            found = await _definitions(conn)
            await conn.execute(f"ALTER TABLE {TABLE} RENAME TO {TABLE}_plain")
            await conn.execute(f"CREATE TABLE {TABLE} (LIKE {TABLE}_plain INCLUDING DEFAULTS INCLUDING GENERATED "
                               f"INCLUDING IDENTITY INCLUDING STORAGE) PARTITION BY HASH (subject_id)")
            await conn.execute(f"DROP TABLE {TABLE}_plain")  # frees the names of its indexes and constraints
            for i in range(partitions):
                await conn.execute(f"CREATE TABLE {TABLE}_p{i:02d} PARTITION OF {TABLE} "
                                   f"FOR VALUES WITH (MODULUS {partitions}, REMAINDER {i})")
            for statement in found["constraints"] + found["indexes"] + found["triggers"]:
                await conn.execute(statement)
            # statement triggers stay on the parent; a TRUNCATE names a partition directly, so the
            # guard goes on each partition too (row triggers, like append-only, are cloned by PostgreSQL)
            for statement in (t for t in found["triggers"] if " TRUNCATE " in t):
                for i in range(partitions):
                    await conn.execute(statement.replace(f" ON public.{TABLE} ", f" ON public.{TABLE}_p{i:02d} ")
                                       .replace("CREATE TRIGGER ", "CREATE TRIGGER p{i:02d}_".format(i=i), 1))
            await conn.execute(f"GRANT {', '.join(roles.RUNTIME_GRANTS[TABLE])} ON {TABLE} TO {roles.RUNTIME_ROLE}")
        return {"partitions": partitions, **{k: len(v) for k, v in found.items()}}
    finally:
        await conn.close()


async def _check_rows(url: str, tenant: str, subject: str, secret: bytes) -> dict[str, int]:
    """The checked call's subject verifies (hashes, seals, state, log queue) on the partitioned
    table; returns the partition its events went to."""
    pool = await create_pool(url, Settings(database_url=url))
    try:
        report = await verify(pool, tenant, subject, secret)
        if not report["valid"]:
            raise RuntimeError(f"{subject} does not verify on the partitioned table: {report['breaks'][:3]}")
        return {r["part"]: r["n"] for r in await pool.fetch(
            f"SELECT tableoid::regclass::text AS part, count(*) AS n FROM {TABLE} WHERE tenant_id = $1 GROUP BY 1",
            tenant)}
    finally:
        await pool.close()


def run(server_url: str, tenant: str, scenario_for: Callable[[Catalog], Scenario], env: dict[str, str],
        headers: dict[str, str], workdir: Path, check: Callable[..., int], generator: str, seconds: int,
        warmup: int, rounds: int, connections: int, secret: bytes) -> dict[str, Any]:
    """`env` is the project service's environment less DATABASE_URL; `check(server, scenario,
    headers, subject=...)` is the comparison's one-request check."""
    urls = {"plain": database.create(server_url), "partitioned": database.create(server_url)}
    built = asyncio.run(_rebuild(database.dsn(urls["partitioned"]), PARTITIONS))
    print(f"\nconsent_events PARTITION BY HASH (subject_id), {PARTITIONS} partitions: {built['constraints']} "
          f"constraints, {built['indexes']} indexes and {built['triggers']} triggers carried over; primary key "
          "(id, subject_id)", flush=True)
    started: list[servers.Server] = []
    try:
        sides = {}
        for name, url in urls.items():
            catalog = asyncio.run(database.load_catalog(url, tenant))
            server = servers.start(f"project-{name}", "app.main:create_app", free_port(),
                                   {**env, "DATABASE_URL": url}, workdir)
            started.append(server)
            scenario = scenario_for(catalog)
            check(server, scenario, headers, subject="partition-check-0")
            sides[name] = (server, scenario)
        spread = asyncio.run(_check_rows(urls["partitioned"], tenant, "partition-check-0", secret))
        runs = itertools.count(1)

        def load(server: servers.Server, scenario: Scenario, length: int) -> Result:
            return run_load(generator, server.port, scenario, headers, length, connections,
                            tag=f"pt{next(runs)}", seeded=1)

        for server, scenario in sides.values():
            load(server, scenario, warmup)
        results: dict[str, list[Result]] = {name: [] for name in sides}
        for _ in range(rounds):
            for name, (server, scenario) in sides.items():
                result = load(server, scenario, seconds)
                results[name].append(result)
                print(f"  record 3 decisions  {name:<12} {result.rps:8.1f} req/s  p50 {result.p50_ms:7.2f} ms  "
                      f"p99 {result.p99_ms:7.2f} ms  failures {result.failures}", flush=True)
        best = {name: max(r, key=lambda x: x.rps) for name, r in results.items()}
        out = {name: {"rps": b.rps, "p50_ms": b.p50_ms, "p99_ms": b.p99_ms, "failures": b.failures,
                      "rounds": [{"rps": r.rps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms} for r in results[name]]}
               for name, b in best.items()}
        out["throughput_ratio"] = best["partitioned"].rps / best["plain"].rps
        out["p99_ratio"] = best["partitioned"].p99_ms / best["plain"].p99_ms
        out["first_rows_in"] = spread
        out["rebuilt"] = built
        print(f"  best rounds: plain {best['plain'].rps:.1f} req/s p99 {best['plain'].p99_ms:.2f} ms; partitioned "
              f"{best['partitioned'].rps:.1f} req/s p99 {best['partitioned'].p99_ms:.2f} ms; throughput ratio "
              f"{out['throughput_ratio']:.2f}, p99 ratio {out['p99_ratio']:.2f} (partitioned / plain)", flush=True)
        return out
    finally:
        for server in started:
            server.stop()
