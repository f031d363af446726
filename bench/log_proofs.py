"""The Merkle log at scale (issue 8's report): checkpointing every seeded event, then inclusion
proofs one at a time, over HTTP (the project service, JWT and all) and in-process (the same
`proofs.inclusion` the route calls, on one runtime connection). Part of `make bench`'s second part
(bench/big.py), after the reads; prints figures, asserts nothing but that each proof verifies."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from app.core.settings import Settings
from app.proof import log, merkle, proofs
from app.proof.context import Proof
from bench.load import Connection, percentile
from bench.servers import Server

WARM_UP = 20


def _summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"n": len(ordered), "p50_ms": percentile(ordered, 50) * 1e3, "p99_ms": percentile(ordered, 99) * 1e3,
            "max_ms": ordered[-1] * 1e3}


def _proof(proof_env: dict[str, str]) -> Proof:
    return Proof.from_settings(Settings(database_url="unused", signing_key_file=Path(proof_env["SIGNING_KEY_FILE"]),
                                        ledger_secret_file=Path(proof_env["LEDGER_SECRET_FILE"])))


async def _checkpoint(runtime_dsn: str, tenant: str, proof: Proof) -> tuple[dict[str, Any], float]:
    conn = await asyncpg.connect(runtime_dsn)
    try:
        started = time.perf_counter()
        async with conn.transaction():
            made = await log.checkpoint(conn, tenant, proof)
        return made, time.perf_counter() - started
    finally:
        await conn.close()


async def _vacuum(dsn: str) -> None:
    """After millions of new log rows, as the reads part does after seeding: an autovacuum of
    ledger_log and ledger_log_nodes running during the timed calls would be measured instead."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM (ANALYZE) ledger_log, ledger_log_nodes, ledger_log_queue, ledger_checkpoints")
    finally:
        await conn.close()


async def _event_ids(runtime_dsn: str, tenant: str, size: int, n: int) -> list[uuid.UUID]:
    conn = await asyncpg.connect(runtime_dsn)
    try:
        chosen = random.sample(range(size), min(n, size))
        rows = await conn.fetch("SELECT event_id FROM ledger_log WHERE tenant_id = $1 AND idx = ANY($2::bigint[])",
                                tenant, chosen)
        ids = [r["event_id"] for r in rows]
        random.shuffle(ids)
        return ids
    finally:
        await conn.close()


async def _in_process(runtime_dsn: str, tenant: str, proof: Proof, ids: list[uuid.UUID]) -> dict[str, float]:
    conn = await asyncpg.connect(runtime_dsn)
    try:
        latencies = []
        for i, event_id in enumerate(ids):
            started = time.perf_counter()
            await proofs.inclusion(conn, tenant, event_id, proof=proof)
            if i >= WARM_UP:
                latencies.append(time.perf_counter() - started)
        return _summary(latencies)
    finally:
        await conn.close()


async def _http(server: Server, headers: dict[str, str], ids: list[uuid.UUID]) -> dict[str, float]:
    conn = await Connection(server.port).open()
    try:
        latencies = []
        for i, event_id in enumerate(ids):
            elapsed, body = await conn.get(f"/v1/audit/proofs/inclusion?event_id={event_id}", headers,
                                           server.log_tail)
            if i == 0:  # the proof is a proof: the audit path leads to the signed root
                got = json.loads(body)
                ok = merkle.verify_inclusion(
                    merkle.leaf_hash(bytes.fromhex(got["event_hash"])), got["leaf_index"], got["tree_size"],
                    [bytes.fromhex(h) for h in got["audit_path"]], bytes.fromhex(got["checkpoint"]["root_hash"]))
                if not ok:
                    raise RuntimeError(f"the inclusion proof of {event_id} does not verify")
            if i >= WARM_UP:
                latencies.append(elapsed)
        return _summary(latencies)
    finally:
        conn.close()


def run(runtime_dsn: str, tenant: str, server: Server, headers: dict[str, str], proof_env: dict[str, str],
        samples: int, owner_dsn: str | None = None) -> dict[str, Any]:
    proof = _proof(proof_env)
    print("\ncheckpointing every event of the log (one checkpoint, as the runtime role) ...", flush=True)
    made, seconds = asyncio.run(_checkpoint(runtime_dsn, tenant, proof))
    size = made["tree_size"] if made else 0
    print(f"  tree size {size:,} signed in {seconds:.0f} s ({seconds / max(size, 1) * 1e6:.0f} s per million "
          "new events)", flush=True)
    if owner_dsn is not None:
        asyncio.run(_vacuum(owner_dsn))
    ids = asyncio.run(_event_ids(runtime_dsn, tenant, size, samples + WARM_UP))
    in_process = asyncio.run(_in_process(runtime_dsn, tenant, proof, ids))
    ids = asyncio.run(_event_ids(runtime_dsn, tenant, size, samples + WARM_UP))  # other pages than the pass before
    http = asyncio.run(_http(server, headers, ids))
    result = {"tree_size": size, "checkpoint_seconds": seconds, "inclusion_in_process": in_process,
              "inclusion_http": http}
    print(f"inclusion proofs at tree size {size:,}, one call at a time, random events (target p99 <= 5 ms)")
    for name, row in (("in-process", in_process), ("HTTP", http)):
        target = "PASS" if row["p99_ms"] <= 5 else "FAIL"
        print(f"  {name:<11} n {row['n']:5d}   p50 {row['p50_ms']:6.2f} ms   p99 {row['p99_ms']:6.2f} ms   "
              f"max {row['max_ms']:6.2f} ms  {target}", flush=True)
    return result
