"""The duty scheduler at scale (issue 10): one pass of the worker's scheduler over 5,000,000 open
duties (a reconfirmation for each of 5,000,000 ad-reception consents of 1,000,000 subjects) of which
100,000 come due at once. Part of `make bench` (after the comparison; skip with
BENCH_SKIP_DUTIES=1), or alone:

    .venv/bin/python -m bench.duties            # its own embedded PostgreSQL

Seeded in SQL as the owner (duties and subjects only: the scheduler reads nothing else), then timed:

- project: `app.duties.scheduler.run_pass` as the worker runs it, on the runtime role: claims the
  due duties (SKIP LOCKED), seals a `notified` record for each in its chain (the trigger checks and
  folds them, and queues each for the Merkle log), writes a `duty.reconfirmation` message and a
  delivery to the tenant's endpoint, 2,000 duties per transaction;
- raw: the same row writes as plain SQL, no hashing, no seal, no trigger, on copies of the tables
  (100,000 rows locked, 100,000 record rows, 100,000 duty rows updated, 100,000 messages and
  deliveries): the floor the scheduler stands on, and the ratio to it.

Prints figures, asserts nothing but that every due duty was announced once.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from app.core.embedded_pg import EmbeddedPostgres, free_port
from app.duties import scheduler
from app.proof import keys
from bench import database, servers

SUBJECTS = int(os.environ.get("BENCH_DUTY_SUBJECTS", "1000000"))
PER_SUBJECT = 5
DUE = int(os.environ.get("BENCH_DUTIES_DUE", "100000"))
TENANT = "bench-duties"

SEED = [
    "INSERT INTO tenants (id, name) VALUES ('{t}', 'Bench duties') ON CONFLICT DO NOTHING",
    """INSERT INTO subjects (id, tenant_id, external_id, last_seq)
       SELECT gen_random_uuid(), '{t}', 'd-' || i, 1 FROM generate_series(1, {subjects}) i""",
    # every consent's reconfirmation: DUE of them announced from yesterday, the rest next year
    """INSERT INTO duties (id, tenant_id, subject_id, kind, purpose_key, notify_at, due_at, status, contents,
                           last_seq, last_hash, created_at, updated_at)
       SELECT gen_random_uuid(), '{t}', s.id, 'reconfirmation', 'marketing-' || c,
              CASE WHEN n <= {due} THEN now() - interval '1 day' ELSE now() + interval '1 year' END,
              CASE WHEN n <= {due} THEN now() + interval '29 days' ELSE now() + interval '13 months' END,
              'due', jsonb_build_object('sender', jsonb_build_object('name', 'Bench'), 'purpose', 'marketing-' || c),
              1, md5(s.id::text) || md5(c::text), now() - interval '2 years', now() - interval '2 years'
       FROM (SELECT id, row_number() OVER () AS k FROM subjects WHERE tenant_id = '{t}') s,
            generate_series(1, {per}) c, LATERAL (SELECT (s.k - 1) * {per} + c AS n) num""",
    """INSERT INTO webhook_endpoints (tenant_id, url, event_types, secret)
       VALUES ('{t}', 'https://officer.example.com/hooks', '{{duty.reconfirmation}}', 'whsec')""",
    "VACUUM (ANALYZE) subjects, duties",
]
RAW = [
    "CREATE TABLE bench_duties AS SELECT * FROM duties WHERE tenant_id = '{t}' AND notify_at <= now()",
    "ALTER TABLE bench_duties ADD PRIMARY KEY (id)",
    "CREATE TABLE bench_records (LIKE duty_records INCLUDING DEFAULTS)",
    "CREATE TABLE bench_messages (LIKE webhook_messages INCLUDING DEFAULTS)",
    "CREATE TABLE bench_deliveries (LIKE webhook_deliveries INCLUDING DEFAULTS)",
    "VACUUM (ANALYZE) bench_duties",
]
RAW_PASS = """
WITH claimed AS (
    SELECT * FROM bench_duties WHERE status = 'due' AND notified_at IS NULL ORDER BY notify_at FOR UPDATE
), records AS (
    INSERT INTO bench_records (id, duty_id, tenant_id, subject_id, seq, kind, purpose_key, action, status, notify_at,
                               due_at, detail, recorded_at, record_version, prev_hash, hash, seal)
    SELECT gen_random_uuid(), c.id, c.tenant_id, c.subject_id, 2, c.kind, c.purpose_key, 'notified', 'due',
           c.notify_at, c.due_at, '{{"type": "duty.reconfirmation"}}', now(), 1, c.last_hash,
           md5(c.id::text) || md5(c.last_hash), md5(c.last_hash) || md5(c.id::text)
    FROM claimed c RETURNING duty_id, hash
), moved AS (
    UPDATE bench_duties d SET last_seq = 2, last_hash = r.hash, notified_at = now(), updated_at = now()
    FROM records r WHERE d.id = r.duty_id RETURNING d.id, d.contents
), messages AS (
    INSERT INTO bench_messages (id, tenant_id, type, body, created_at)
    SELECT gen_random_uuid(), '{t}', 'duty.reconfirmation', m.contents::text, now() FROM moved m RETURNING id
)
INSERT INTO bench_deliveries (tenant_id, message_id, endpoint_id)
SELECT '{t}', m.id, (SELECT id FROM webhook_endpoints WHERE tenant_id = '{t}' LIMIT 1) FROM messages m
"""


async def _sql(dsn: str, statements: list[str], **values: Any) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        for statement in statements:
            await conn.execute(statement.format(t=TENANT, **values))
        return time.perf_counter() - started
    finally:
        await conn.close()


async def _pass(runtime_dsn: str, secret: bytes) -> tuple[dict[str, int], float]:
    conn = await asyncpg.connect(runtime_dsn)
    try:
        started = time.perf_counter()
        moved = await scheduler.run_pass(conn, secret)
        return moved, time.perf_counter() - started
    finally:
        await conn.close()


def run(url: str, secret: bytes) -> dict[str, Any]:
    dsn = database.dsn(url)
    n = SUBJECTS * PER_SUBJECT
    print(f"\nduty scheduler: seeding {n:,} open duties ({SUBJECTS:,} subjects x {PER_SUBJECT}), {DUE:,} due ...",
          flush=True)
    seeded = asyncio.run(_sql(dsn, SEED, subjects=SUBJECTS, due=DUE, per=PER_SUBJECT))
    print(f"  seeded in {seeded:.0f} s", flush=True)
    asyncio.run(_sql(dsn, RAW))
    raw = asyncio.run(_sql(dsn, ["BEGIN", RAW_PASS, "COMMIT"]))
    moved, elapsed = asyncio.run(_pass(database.dsn(database.runtime_url(url)), secret))
    assert moved["notified"] == DUE, moved
    again, _ = asyncio.run(_pass(database.dsn(database.runtime_url(url)), secret))
    assert again["notified"] == 0, again
    result = {"duties": n, "due": DUE, "pass_s": elapsed, "raw_s": raw, "seed_s": seeded}
    print(f"  one scheduler pass, {DUE:,} of {n:,} duties due: {elapsed:.1f} s ({DUE / elapsed:,.0f} duties/s); "
          f"raw SQL of the same writes {raw:.1f} s; ratio {elapsed / raw:.1f}x raw", flush=True)
    return result


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="cl-duties-"))
    pg = EmbeddedPostgres(workdir / "pg", free_port(), fast_unsafe=True)
    try:
        pg.start()
        url = database.create(pg.url)
        proof_env = servers.proof_keys(workdir)
        run(url, keys.load_secret(Path(proof_env["LEDGER_SECRET_FILE"]), None))
    finally:
        pg.stop("immediate")
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
