"""Audit bundles at scale (issue 8 point 4): how fast `verify-bundle` checks one, how much memory
`audit bundle` needs to write one. Not part of `make test`; prints figures, asserts nothing.

    .venv/bin/python -m bench.proof make --events 1000000 --out /tmp/b.zip [--checkpoint-every N]
                                                                              # synthetic, no database
    .venv/bin/python -m bench.proof verify /tmp/b.zip [--jobs N]              # events/s, peak memory
    .venv/bin/python -m bench.proof writer --events 1000000                   # embedded PostgreSQL:
        seed N valid events in SQL, then `audit bundle` in a child process, its peak RSS sampled;
        then verify-bundle on the result

`make` writes events exactly as the service prints them (chain.document of synthetic rows: valid
hashes, chains, notices, disclosures), through the same BundleWriter as `audit bundle`, with a
checkpoint every CHECKPOINT_EVERY events signed by a throwaway key.

Measured (2026-11-22, the 2-vCPU development VM, shared: load 3-6 from other sessions' tests and
benchmarks throughout, so the runs were made at nice -15; CPython 3.11):

- `writer --events 1000000`: `audit bundle` wrote 1,000,000 events (925 MB of events.ndjson, a 123 MB
  ZIP) in 63 s (~16,000 events/s, under load); its RSS was 102 MB in the first third of the run and
  102 MB in the last (313 samples): flat. The bundle verified.
- `verify` of that bundle (1,000,000 events, 166,667 subjects): 45,000 events/s with two worker
  processes, 39,000 with none. CPU per event: ~22 us in a worker (orjson parse ~4, shape checks
  ~4, three SHA-256 -- the document, the leaf, ~one node -- ~4, RFC 8785 serialisation ~1, chain,
  notice and disclosure bookkeeping and the rest), ~6.6 us in the reading process (inflate ~3, the
  member's SHA-256 ~1, CRC, handing blocks over, stitching). So the ceiling is about
  min(1 / 6.6 us, W / 28 us): the 100,000 events/s goal needs about four idle cores; two give ~70,000.
  Peak RSS 162 MB (the last event of each subject, plus one block per worker).
- 200,000 events with a checkpoint every 5 events (40,000 checkpoints, as a quiet tenant checkpointed
  every minute would have): 20,600 events/s; each checkpoint costs ~0.2 ms of Ed25519 verification
  in a worker and ~0.06 ms here (reading it, the root at its size).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.consents import chain
from app.core.hashing import canonical_json, sha256_hex
from app.proof import keys, merkle

TENANT = "bench"
EVENTS_PER_SUBJECT = 6
CHECKPOINT_EVERY = 50_000
PURPOSES = ("membership", "marketing-sms", "marketing-email")
NOTICE_BODY = "벤치 개인정보 처리방침\n" * 40
DISCLOSURES = {p: {"purpose": f"{p} 목적", "items": ["휴대전화번호"], "retention": "동의 철회 시까지"} for p in PURPOSES}
NOTICE_ID = uuid.UUID(int=1)
PURPOSE_IDS = {p: uuid.UUID(int=100 + i) for i, p in enumerate(PURPOSES)}


def _rows(n: int, evidence: bool = True) -> Iterator[dict[str, Any]]:
    """n printed events: subjects of EVENTS_PER_SUBJECT events (a sign-up of 3 grants, then changes);
    `evidence`: with an evidence commitment (the database seeding leaves it out: no evidence rows)."""
    notice_sha = sha256_hex(NOTICE_BODY)
    disclosure = {p: sha256_hex(canonical_json(c)) for p, c in DISCLOSURES.items()}
    start = datetime(2026, 1, 1, tzinfo=UTC)
    made = 0
    subject = 0
    while made < n:
        subject += 1
        status = {}
        prev = None
        t = start + timedelta(seconds=subject)
        request = uuid.uuid4()
        for seq in range(1, EVENTS_PER_SUBJECT + 1):
            if made >= n:
                return
            purpose = PURPOSES[(seq - 1) % len(PURPOSES)]
            before = status.get(purpose)
            action = "granted" if before in (None, "withdrawn") else "withdrawn"
            if seq > 3:
                request = uuid.uuid4()
            row = {"chain_version": 2, "id": uuid.uuid4(), "seq": seq, "request_id": request, "purpose_key": purpose,
                   "version": (before is not None) + 1 + (seq > 3 and seq - 4 >= 3), "action": action,
                   "status": action, "previous_status": before, "collection_point_key": "signup",
                   "notice_id": NOTICE_ID, "notice_key": "privacy-policy", "notice_version": "2026-01",
                   "notice_sha256": notice_sha, "notice_superseded_at": None, "disclosure_hash": disclosure[purpose],
                   "method": "web", "actor_type": "subject", "actor_ref": None,
                   "evidence_id": uuid.uuid4() if evidence else None,
                   "evidence_commitment": os.urandom(32).hex() if evidence else None, "occurred_at": t, "recorded_at": t,
                   "reason": None, "prev_hash": prev, "subject_ref": f"member-{subject:08d}"}
            status[purpose] = action
            doc = chain.document(row, tenant=TENANT, subject_ref=row["subject_ref"])
            doc["hash"] = prev = chain.document_hash(doc)
            made += 1
            yield doc
            t += timedelta(milliseconds=1)


def make(n: int, out: Path, every: int = CHECKPOINT_EVERY) -> None:
    import orjson

    from app.proof.bundle import BundleWriter

    signer = keys.Signer(Ed25519PrivateKey.generate())
    started = time.perf_counter()
    writer = BundleWriter(out, TENANT)
    stack: list[bytes] = []
    checkpoints = []  # written after the events, as the service does
    lines: list[bytes] = []
    size = 0

    def sign(size: int) -> None:
        h = stack[-1]
        for left in reversed(stack[:-1]):
            h = merkle.node_hash(left, h)
        payload = {"tenant": TENANT, "tree_size": size, "root_hash": h.hex(),
                   "issued_at": chain.format_time(datetime.now(UTC))}
        checkpoints.append({**payload, "key_id": signer.kid, "jws": signer.sign(payload, "consent-ledger-checkpoint+jwt")})

    for doc in _rows(n):
        lines.append(orjson.dumps({"log_index": size, "event": doc}))
        leaf = merkle.leaf_hash(bytes.fromhex(doc["hash"]))
        size += 1
        m = size
        while not m & 1:
            leaf = merkle.node_hash(stack.pop(), leaf)
            m >>= 1
        stack.append(leaf)
        if size % every == 0 or size == n:
            sign(size)
        if len(lines) >= 2000:
            writer.events.write(b"\n".join(lines) + b"\n")
            lines = []
    if lines:
        writer.events.write(b"\n".join(lines) + b"\n")
    array = writer.start_checkpoints()
    for checkpoint in checkpoints:
        array.add(checkpoint)
    manifest = writer.finish(
        tree_size=size, root_hash=checkpoints[-1]["root_hash"], counts={"events": size, "chain_v1_events": 0},
        jwks={"keys": [signer.public_jwk()]}, filename=out.name,
        notices=[{"id": str(NOTICE_ID), "key": "privacy-policy", "version": "2026-01", "title": "벤치",
                  "language": "ko", "body": NOTICE_BODY, "sha256": sha256_hex(NOTICE_BODY),
                  "effective_at": "2026-01-01T00:00:00.000000Z", "published_at": "2026-01-01T00:00:00.000000Z"}],
        disclosures=[{"purpose": p, "hash": sha256_hex(canonical_json(c)), "content": c} for p, c in DISCLOSURES.items()])
    events_member = manifest["files"][0]
    print(f"made {out}: {size} events, {len(checkpoints)} checkpoints, events.ndjson {events_member['size'] / 1e6:.0f} MB "
          f"uncompressed, ZIP {out.stat().st_size / 1e6:.0f} MB, {time.perf_counter() - started:.1f} s")


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def verify(path: Path, jobs: int | None) -> None:
    """verify-bundle in this process; wall-clock events/s, and the CPU time per event of this process
    (reading, inflating, stitching) and of the workers, which on a busy host says more than the clock:
    with W idle cores the ceiling is about min(1 / main, W / (main + workers)) events per second."""
    from app.proof.cli import summary
    from app.proof.verify_bundle import verify as run

    self_cpu, children_cpu = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    result = run(path, jobs=jobs)
    main_cpu = _cpu(resource.RUSAGE_SELF) - self_cpu
    workers_cpu = _cpu(resource.RUSAGE_CHILDREN) - children_cpu
    n = result.counts.get("events", 0) or 1
    print(summary(result))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"jobs {jobs if jobs is not None else 'auto'} (CPUs: {os.cpu_count()}, load {os.getloadavg()[0]:.1f}): "
          f"{n / result.seconds:,.0f} events/s; CPU per event: this process {main_cpu / n * 1e6:.1f} us, "
          f"workers {workers_cpu / n * 1e6:.1f} us; peak RSS {peak:.0f} MB (largest worker {children:.0f} MB)")


# -- the writer against a real database ----------------------------------------------------------------


def _peak_rss_of(pid: int, stop: threading.Event, out: list[int]) -> None:
    while not stop.is_set():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append(int(line.split()[1]))
        except OSError:
            return
        time.sleep(0.2)


async def _seed(url: str, n: int) -> None:
    """A tenant, its catalog rows, and n valid sealed events COPYed (triggers off for the load, as a
    restore would; the log is filled the way ledger_log_take would, then checkpoints are made by the
    service's own code when the bundle is written)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("INSERT INTO tenants (id, name) VALUES ($1, 'bench')", TENANT)
        await conn.execute("INSERT INTO notices (id, tenant_id, key, version, title, body, sha256, published_at) "
                           "VALUES ($1, $2, 'privacy-policy', '2026-01', '벤치', $3, $4, now())",
                           NOTICE_ID, TENANT, NOTICE_BODY, sha256_hex(NOTICE_BODY))
        for p, content in DISCLOSURES.items():
            h = sha256_hex(canonical_json(content))
            await conn.execute("INSERT INTO purposes (id, tenant_id, key, kind, disclosures, disclosure_hash, active) "
                               "VALUES ($1, $2, $3, 'optional', $4::jsonb, $5, true)", PURPOSE_IDS[p], TENANT, p,
                               canonical_json(content).decode(), h)
            await conn.execute("INSERT INTO purpose_disclosures (tenant_id, purpose_id, hash, content) "
                               "VALUES ($1, $2, $3, $4::jsonb)", TENANT, PURPOSE_IDS[p], h, canonical_json(content).decode())
        secret = b"bench-ledger-secret-0123456789-abcdef"
        subjects: dict[str, uuid.UUID] = {}
        events, log = [], []
        idx = 0

        async def flush() -> None:
            await conn.copy_records_to_table("consent_events", records=events, columns=EVENT_COLUMNS)
            await conn.copy_records_to_table("ledger_log", records=log,
                                             columns=("tenant_id", "idx", "event_id", "subject_id", "event_hash"))
            events.clear()
            log.clear()

        subject_rows = []
        for doc in _rows(n, evidence=False):
            ref = doc["subject_id"]
            sid = subjects.get(ref)
            if sid is None:
                sid = subjects[ref] = uuid.uuid4()
                subject_rows.append((sid, TENANT, ref))
                if len(subject_rows) >= 5000:
                    await conn.copy_records_to_table("subjects", records=subject_rows,
                                                     columns=("id", "tenant_id", "external_id"))
                    subject_rows.clear()
            t = datetime.strptime(doc["recorded_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            events.append((uuid.UUID(doc["id"]), TENANT, sid, doc["seq"], PURPOSE_IDS[doc["purpose"]], doc["version"],
                           doc["action"], doc["status"], doc["previous_status"], NOTICE_ID, doc["disclosure_hash"],
                           "web", "subject", t, t, uuid.UUID(doc["request_id"]), doc["prev_hash"], doc["hash"], 2,
                           doc["purpose"], "signup", "privacy-policy", "2026-01", doc["notice"]["sha256"],
                           keys.seal(secret, doc["hash"])))
            log.append((TENANT, idx, uuid.UUID(doc["id"]), sid, doc["hash"]))
            idx += 1
            if len(events) >= 5000:
                if subject_rows:
                    await conn.copy_records_to_table("subjects", records=subject_rows,
                                                     columns=("id", "tenant_id", "external_id"))
                    subject_rows.clear()
                await flush()
        if subject_rows:
            await conn.copy_records_to_table("subjects", records=subject_rows, columns=("id", "tenant_id", "external_id"))
        if events:
            await flush()
        # the complete subtrees the log keeps, as log.extend would have stored them
        hashes = [merkle.leaf_hash(bytes.fromhex(h)) for h in await conn.fetchval(
            "SELECT array_agg(event_hash ORDER BY idx) FROM ledger_log WHERE tenant_id = $1", TENANT)]
        nodes = merkle.new_nodes(0, hashes, lambda level, i: b"")
        for start in range(0, len(nodes), 50000):
            await conn.copy_records_to_table("ledger_log_nodes", columns=("tenant_id", "level", "idx", "hash"),
                                             records=[(TENANT, lv, ix, h) for lv, ix, h in nodes[start:start + 50000]])
        await conn.execute("VACUUM ANALYZE consent_events")
    finally:
        await conn.close()


EVENT_COLUMNS = ("id", "tenant_id", "subject_id", "seq", "purpose_id", "version", "action", "status", "previous_status",
                 "notice_id", "disclosure_hash", "method", "actor_type", "occurred_at", "recorded_at", "request_id",
                 "prev_hash", "hash", "chain_version", "purpose_key", "collection_point_key", "notice_key",
                 "notice_version", "notice_sha256", "seal")


def writer(n: int, keep: Path | None) -> None:
    from app.core import roles
    from app.core.embedded_pg import EmbeddedPostgres, free_port

    work = Path(tempfile.mkdtemp(prefix="cl-bench-proof-"))
    pg = EmbeddedPostgres(work / "pg", free_port(), fast_unsafe=True)
    pg.start()
    try:
        from app.cli import migrate

        owner, runtime = pg.ensure_roles("bench")
        migrate(owner, roles.RUNTIME_ROLE)
        t = time.perf_counter()
        asyncio.run(_seed(pg.superuser_url("bench").replace("postgresql+asyncpg://", "postgresql://"), n))
        print(f"seeded {n} events in {time.perf_counter() - t:.0f} s")
        key = work / "signing.pem"
        keys.generate_key_file(key)
        secret = work / "ledger-secret"
        keys.generate_secret_file(secret)
        out = keep or work / "bundle.zip"
        env = {**os.environ, "DATABASE_URL": runtime, "SIGNING_KEY_FILE": str(key), "LEDGER_SECRET_FILE": str(secret)}
        t = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "app.proof.cli", "audit", "bundle", "--tenant", TENANT,
                                  "--out", str(out)], env=env)
        samples: list[int] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_peak_rss_of, args=(child.pid, stop, samples), daemon=True)
        sampler.start()
        code = child.wait()
        stop.set()
        sampler.join()
        seconds = time.perf_counter() - t
        if code != 0:
            raise SystemExit(f"audit bundle exited {code}")
        third = max(1, len(samples) // 3)
        print(f"audit bundle: {n} events in {seconds:.1f} s ({n / seconds:,.0f} events/s), ZIP "
              f"{out.stat().st_size / 1e6:.0f} MB; RSS peak {max(samples) / 1024:.0f} MB, "
              f"peak in the first third {max(samples[:third]) / 1024:.0f} MB, last third "
              f"{max(samples[-third:]) / 1024:.0f} MB ({len(samples)} samples)")
        verify(out, None)
    finally:
        pg.stop(mode="immediate")
        shutil.rmtree(work, ignore_errors=True)  # the database, keys and (without --keep) the bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.proof", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p_make = commands.add_parser("make")
    p_make.add_argument("--events", type=int, default=1_000_000)
    p_make.add_argument("--out", type=Path, required=True)
    p_make.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_EVERY,
                        help="events between two checkpoints (a tenant checkpointed every minute: a few)")
    p_verify = commands.add_parser("verify")
    p_verify.add_argument("file", type=Path)
    p_verify.add_argument("--jobs", type=int)
    p_writer = commands.add_parser("writer")
    p_writer.add_argument("--events", type=int, default=1_000_000)
    p_writer.add_argument("--keep", type=Path, help="write the bundle here (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.command == "make":
        make(args.events, args.out, args.checkpoint_every)
    elif args.command == "verify":
        verify(args.file, args.jobs)
    else:
        writer(args.events, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
