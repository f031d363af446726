"""A campaign's audience at once (issue 9 point 6): `POST /v1/permissions/{channel}/check` with
100,000 member ids, target under 1 second on this machine. Part of `make bench` (after the
project-vs-baseline comparison; skip with BENCH_SKIP_AUDIENCE=1), or alone:

    .venv/bin/python -m bench.audience            # seeds its own embedded PostgreSQL

Seeds AUDIENCE subjects (half granted the umbrella marketing, SMS and email consents, half who
granted and then withdrew them: 3 and 6 sealed chain version 2 events each, through the append
trigger), then times, one call at a time over one keep-alive connection:

- JSON: the 100,000 ids in one request, the allowed ones and the denied with reasons back;
- NDJSON: the same ids streamed in and out (one line each, then a summary);
- raw: the statement the service runs for a chunk (CURRENT, app/permissions/audience.py) on one
  asyncpg connection, for all ids at once, and a Python pass over its answer: the floor the service stands on
  (its ratio to the service: how much the HTTP, JSON and rules layers add).

Prints figures, asserts nothing but that the answers are right.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from app.auth.tokens import issue
from app.core.embedded_pg import EmbeddedPostgres, free_port
from app.core.settings import Settings
from app.permissions.audience import CURRENT, PURPOSES
from app.proof import keys
from bench import database, servers
from bench.seed import Catalog, seed_parallel

AUDIENCE = int(os.environ.get("BENCH_AUDIENCE", "100000"))
RUNS = int(os.environ.get("BENCH_AUDIENCE_RUNS", "5"))
TENANT = "bench-audience"
MARKETING = ("marketing", "marketing-sms", "marketing-email")
NOON = "2027-01-20T03:00:00Z"  # 12:00 KST: the night rule stays out of the figures


async def _marketing_catalog(url: str) -> Catalog:
    catalog = await database.load_catalog(url, TENANT)
    conn = await asyncpg.connect(database.dsn(url))
    try:
        rows = {r["key"]: r for r in await conn.fetch(
            "SELECT id, key, disclosure_hash FROM purposes WHERE tenant_id = $1 AND key = ANY($2::text[])",
            TENANT, list(MARKETING))}
    finally:
        await conn.close()
    return dataclasses.replace(catalog, purposes=tuple((rows[k]["id"], k, rows[k]["disclosure_hash"])
                                                        for k in MARKETING))


async def _raw(runtime_dsn: str, ids: list[str]) -> float:
    conn = await asyncpg.connect(runtime_dsn)
    try:
        purposes = [r["id"] for r in await conn.fetch(PURPOSES, TENANT)]
        started = time.perf_counter()
        async with conn.transaction(readonly=True):
            await conn.execute("SET LOCAL work_mem = '64MB'")
            signatures = await conn.fetchval(CURRENT, TENANT, ids, purposes, None, None)
        known = sum(1 for signature in signatures if signature >= 0)  # the least a caller does with them
        elapsed = time.perf_counter() - started
        assert known == len(ids), known
        return elapsed
    finally:
        await conn.close()


def _time(fn, runs: int) -> list[float]:
    fn()  # warm: plans, caches
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def run(url: str, server: servers.Server, workdir: Path, secret: bytes, jwt: tuple[str, str, str]) -> dict[str, Any]:
    catalog = asyncio.run(_marketing_catalog(url))
    half = AUDIENCE // 2
    print(f"\naudience check: seeding {AUDIENCE:,} subjects (half granted, half withdrawn) ...", flush=True)
    started = time.perf_counter()
    dsn = database.dsn(url)
    seed_parallel(dsn, catalog, "aud-y-", half, 3, 2, secret)
    seed_parallel(dsn, catalog, "aud-n-", AUDIENCE - half, 6, 2, secret)
    print(f"  seeded in {time.perf_counter() - started:.0f} s", flush=True)
    ids = [f"aud-y-{i}" for i in range(half)] + [f"aud-n-{i}" for i in range(AUDIENCE - half)]
    settings = Settings(database_url=url, jwt_secret=jwt[0], jwt_issuer=jwt[1], jwt_audience=jwt[2])
    token = issue(settings, tenant=TENANT, sub="alimi", scopes=["permissions:read"], ttl_seconds=3600)
    headers = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{server.port}/v1/permissions/sms/check?at={NOON}"
    body = json.dumps({"subject_ids": ids}).encode()
    ndjson = "\n".join(json.dumps(i) for i in ids).encode()

    with httpx.Client(timeout=120) as client:
        def post_json() -> None:
            response = client.post(base, content=body, headers={**headers, "Content-Type": "application/json"})
            assert response.status_code == 200, response.text[:500]
            got = orjson.loads(response.content)  # a processor's client; the stdlib's json takes ~40 ms more
            assert got["counts"] == {"checked": AUDIENCE, "allowed": half, "denied": AUDIENCE - half}, got["counts"]

        def post_ndjson() -> None:
            response = client.post(base, content=ndjson, headers={**headers, "Content-Type": "application/x-ndjson"})
            assert response.status_code == 200, response.text[:500]
            last = json.loads(response.content.rsplit(b"\n", 2)[-2])
            assert last["summary"]["counts"]["allowed"] == half, last

        json_times = _time(post_json, RUNS)
        ndjson_times = _time(post_ndjson, RUNS)
    runtime_dsn = database.dsn(database.runtime_url(url))
    asyncio.run(_raw(runtime_dsn, ids))
    raw_times = [asyncio.run(_raw(runtime_dsn, ids)) for _ in range(RUNS)]
    result = {"ids": AUDIENCE, "json_s": json_times, "ndjson_s": ndjson_times, "raw_s": raw_times}
    med = {k: statistics.median(v) for k, v in (("json", json_times), ("ndjson", ndjson_times), ("raw", raw_times))}
    print(f"  {AUDIENCE:,} ids, {RUNS} runs each, median (best)      target: under 1 s")
    for name in ("json", "ndjson", "raw"):
        best = min(result[f"{name}_s"])
        verdict = "" if name == "raw" else ("PASS" if med[name] < 1 else "FAIL")
        ratio = "" if name == "raw" else f"   {med[name] / med['raw']:.1f}x raw"
        print(f"  {name:<7} {med[name]:6.3f} s ({best:.3f} s){ratio}  {verdict}", flush=True)
    return result


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="cl-audience-"))
    pg = EmbeddedPostgres(workdir / "pg", free_port(), fast_unsafe=True)
    server = None
    try:
        pg.start()
        url = database.create(pg.url)
        proof_env = servers.proof_keys(workdir)
        secret = keys.load_secret(Path(proof_env["LEDGER_SECRET_FILE"]), None)
        jwt = (secrets.token_urlsafe(32), "consent-ledger-bench", "consent-ledger")
        server = servers.start("project", "app.main:create_app", free_port(), {
            "DATABASE_URL": url, "JWT_SECRET": jwt[0], "JWT_ISSUER": jwt[1], "JWT_AUDIENCE": jwt[2], **proof_env,
        }, workdir)
        run(url, server, workdir, secret, jwt)
    finally:
        if server is not None:
            server.stop()
        pg.stop("immediate")
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
