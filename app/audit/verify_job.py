"""Tenant-wide verification as a resumable job (issue 11 point 4; docs/audit.md).

A run (`verification_runs`) walks the tenant's subjects in member-id order, a batch at a time
(app/audit/verify_batch.py), then checks the log against the signed checkpoints
(app/audit/verify_log.py). Each batch commits its counts, its broken subjects and the new keyset
position in ONE statement guarded by the position it started from and the lease: a worker that
lost its run (killed, or too slow to renew the lease) cannot add to it, and the next one resumes
from the last committed position, so nothing is counted twice. One holder at a time per run
(lease_owner, lease_until; a run whose lease ran out is claimed with SKIP LOCKED).

Reads go to AUDIT_DATABASE_URL when set (a replica), writes of the run's row to DATABASE_URL.
Batches are checked in worker processes (one per CPU) for a large tenant, as verify-bundle checks
blocks (app/proof/bundle_workers.py); the main loop plans them ahead and commits them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import asyncpg

from app.audit import verify_batch, verify_log
from app.audit.verify_batch import Batch
from app.core.db import _init_connection, asyncpg_dsn, connect
from app.core.periodic import every
from app.core.responses import dumps
from app.core.settings import Settings
from app.proof.context import Proof

log = logging.getLogger("consent_ledger.audit")

LISTED = 1000  # broken subjects listed in a run (all are counted)
PARALLEL_FROM = 200_000  # events: below this, worker processes cost more to start than they save
MAX_JOBS = 4

START = """
INSERT INTO verification_runs (tenant_id, requested_by, batch_subjects, subjects_total, events_total)
SELECT $1, $2, $3, count(*), coalesce(sum(last_seq), 0) FROM subjects WHERE tenant_id = $1
ON CONFLICT (tenant_id) WHERE status = 'running' DO NOTHING
RETURNING *
"""
RUNNING = "SELECT * FROM verification_runs WHERE tenant_id = $1 AND status = 'running'"
# The oldest run nobody holds (or whose holder stopped renewing), optionally of one tenant or run.
CLAIM = """
UPDATE verification_runs SET lease_owner = $1, lease_until = clock_timestamp() + make_interval(secs => $2),
       started_at = coalesce(started_at, clock_timestamp()), updated_at = clock_timestamp()
WHERE id = (SELECT id FROM verification_runs
            WHERE status = 'running' AND ($3::text IS NULL OR tenant_id = $3)
              AND (lease_until IS NULL OR lease_until < clock_timestamp())
            ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING *, jsonb_array_length(broken) AS listed
"""
# One batch, committed only by the holder and only from the position it started at.
STEP = """
UPDATE verification_runs SET position = $4, subjects_done = subjects_done + $5, events_done = events_done + $6,
       duty_records_done = duty_records_done + $7, broken_total = broken_total + $8, broken = broken || $9::jsonb,
       lease_until = clock_timestamp() + make_interval(secs => $10), updated_at = clock_timestamp()
WHERE id = $1 AND lease_owner = $2 AND status = 'running' AND stage = 'subjects' AND position IS NOT DISTINCT FROM $3
RETURNING id
"""
TO_LOG = """
UPDATE verification_runs SET stage = 'log', updated_at = clock_timestamp()
WHERE id = $1 AND lease_owner = $2 AND status = 'running' AND stage = 'subjects' AND position IS NOT DISTINCT FROM $3
RETURNING id
"""
RENEW = """
UPDATE verification_runs SET lease_until = clock_timestamp() + make_interval(secs => $3), updated_at = clock_timestamp()
WHERE id = $1 AND lease_owner = $2 AND status = 'running' RETURNING id
"""
FINISH = """
UPDATE verification_runs SET stage = 'done', status = 'finished', log = $3::jsonb,
       valid = broken_total = 0 AND NOT $4, finished_at = clock_timestamp(), updated_at = clock_timestamp(),
       lease_owner = NULL, lease_until = NULL
WHERE id = $1 AND lease_owner = $2 AND status = 'running' AND stage = 'log'
RETURNING id
"""
RELEASE = "UPDATE verification_runs SET lease_until = NULL WHERE id = $1 AND lease_owner = $2 AND status = 'running'"
# A run that cannot go on (an error no retry will cure) ends, says why, and frees its tenant for a new one.
FAILED = """
UPDATE verification_runs SET status = 'finished', stage = 'done', valid = NULL, error = $3,
       finished_at = clock_timestamp(), updated_at = clock_timestamp(), lease_owner = NULL, lease_until = NULL
WHERE id = $1 AND lease_owner = $2 AND status = 'running'
"""


class LeaseLost(Exception):
    """Another holder has the run now (this one was too slow, or thought dead)."""


class _Stopping(Exception):
    """The worker is stopping: the run is left, its lease released, for the next holder."""


async def start(conn: asyncpg.Connection, tenant: str, requested_by: str, batch_subjects: int,
                ) -> tuple[asyncpg.Record, bool]:
    """(the run, True) when this call started it; (the tenant's running one, False) when one runs."""
    for _ in range(3):  # the running one may finish between the insert and the read
        row = await conn.fetchrow(START, tenant, requested_by, batch_subjects)
        if row is not None:
            return row, True
        row = await conn.fetchrow(RUNNING, tenant)
        if row is not None:
            return row, False
    raise RuntimeError("could not start a verification run nor find the running one")


def owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def default_jobs(settings_jobs: int, events: int) -> int:
    if settings_jobs > 0:
        return settings_jobs
    if events < PARALLEL_FROM:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cpus, MAX_JOBS))


# -- worker processes (as app/proof/bundle_workers.py): each its own connection and event loop ----

_process: tuple[asyncio.AbstractEventLoop, asyncpg.Connection, bytes, list[int | None]] | None = None


def _init_process(dsn: str, secret: bytes) -> None:
    global _process
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(
        dsn, server_settings={"application_name": "consent-ledger-verify", "timezone": "UTC"}))
    loop.run_until_complete(_init_connection(conn))
    _process = (loop, conn, secret, [])  # the last: the tenant's first version 2 leaf, once looked up


def _check_in_process(tenant: str, after: str | None, upto: str) -> Batch:
    assert _process is not None
    loop, conn, secret, first_v2 = _process
    return loop.run_until_complete(verify_batch.check_batch(conn, tenant, after, 0, secret, first_v2, upto=upto))


# -- one run ----------------------------------------------------------------------------------------


class Runner:
    """Carries one claimed run to its end (or until `stop`, or the lease is lost)."""

    def __init__(self, run: asyncpg.Record, *, read: asyncpg.Connection, write: asyncpg.Connection, proof: Proof,
                 settings: Settings, owner: str, stop: asyncio.Event | None = None,
                 on_step: Callable[[dict[str, Any]], Awaitable[None] | None] | None = None, read_dsn: str,
                 jobs: int | None = None) -> None:
        self.run, self.read, self.write, self.proof, self.settings = run, read, write, proof, settings
        self.owner, self.stop, self.on_step, self.read_dsn = owner, stop, on_step, read_dsn
        self.position: str | None = run["position"]
        self.listed = run["listed"]
        self.jobs = jobs if jobs is not None else default_jobs(settings.verification_jobs, run["events_total"])
        self.first_v2: list[int | None] = []

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    async def __call__(self) -> bool:
        """True when the run finished here; False when stopped (the lease released for the next)."""
        alongside: asyncio.Task | None = None
        if self.run["stage"] == "subjects":
            if self.jobs > 1:
                # Worker processes check the subjects; this process, otherwise waiting on them, checks
                # the log meanwhile on a connection of its own (its lease kept by the subjects' steps).
                alongside = asyncio.create_task(self._log_alongside())
            finished = False
            try:
                done = await (self._subjects_in_processes() if self.jobs > 1 else self._subjects())
                if not done:
                    await self.write.execute(RELEASE, self.run["id"], self.owner)
                    return False
                if await self.write.fetchval(TO_LOG, self.run["id"], self.owner, self.position) is None:
                    raise LeaseLost()
                finished = True
            finally:
                if alongside is not None and not finished:  # stopped, lost or failed: the log check too
                    alongside.cancel()
                    await asyncio.gather(alongside, return_exceptions=True)

        async def beat() -> None:
            if self._stopping():
                raise _Stopping()
            await self._renew()

        try:
            if alongside is not None:
                result = await self._renewing(alongside)
            else:
                result = await verify_log.check_log(self.read, self.run["tenant_id"], self.proof,
                                                    checkpoint_dir=self.settings.checkpoint_dir, beat=beat)
        except _Stopping:
            await self.write.execute(RELEASE, self.run["id"], self.owner)
            return False
        if await self.write.fetchval(FINISH, self.run["id"], self.owner, dumps(result),
                                     bool(result["breaks"])) is None:
            raise LeaseLost()
        await self._report({"stage": "done", "log": result})
        return True

    async def _log_alongside(self) -> dict[str, Any]:
        async def beat() -> None:
            if self._stopping():
                raise _Stopping()
            await asyncio.sleep(0)  # the subjects' commits and lease renewals get their turn

        conn = await connect(self.read_dsn, self.settings, "consent-ledger-verify-log", reader=True)
        try:
            return await verify_log.check_log(conn, self.run["tenant_id"], self.proof,
                                              checkpoint_dir=self.settings.checkpoint_dir, beat=beat)
        finally:
            await conn.close()

    async def _renew(self) -> None:
        if await self.write.fetchval(RENEW, self.run["id"], self.owner,
                                     self.settings.verification_lease_seconds) is None:
            raise LeaseLost()

    async def _renewing(self, work: Awaitable[Any]) -> Any:
        """`work` (a batch), with the lease renewed every third of its length meanwhile: a batch longer
        than the lease does not let another worker take the run from under it."""
        async def renew() -> None:
            while True:
                await asyncio.sleep(self.settings.verification_lease_seconds / 3)
                await self._renew()

        renewal = asyncio.create_task(renew())
        try:
            return await work
        finally:
            renewal.cancel()
            await asyncio.gather(renewal, return_exceptions=True)

    async def _commit(self, upto: str, batch: Batch) -> None:
        listed = batch.broken[:max(0, LISTED - self.listed)]
        if await self.write.fetchval(
                STEP, self.run["id"], self.owner, self.position, upto, batch.subjects, batch.events,
                batch.duty_records, len(batch.broken), dumps(listed), self.settings.verification_lease_seconds) is None:
            raise LeaseLost()
        self.position = upto
        self.listed += len(listed)
        await self._report({"stage": "subjects", "subjects": batch.subjects, "events": batch.events,
                            "broken": len(batch.broken)})

    async def _report(self, step: dict[str, Any]) -> None:
        if self.on_step is not None:
            result = self.on_step(step)
            if asyncio.iscoroutine(result):
                await result

    async def _subjects(self) -> bool:
        while not self._stopping():
            batch = await self._renewing(verify_batch.check_batch(
                self.read, self.run["tenant_id"], self.position, self.run["batch_subjects"], self.proof.secret,
                self.first_v2))
            if batch.last is None:
                return True
            await self._commit(batch.last, batch)
        return False

    async def _subjects_in_processes(self) -> bool:
        """Batches planned ahead (2 per process in flight), checked in worker processes, committed in
        order; a crash of one fails the round, and the next round resumes at the last commit."""
        import multiprocessing

        loop = asyncio.get_running_loop()
        tenant, size = self.run["tenant_id"], self.run["batch_subjects"]
        pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_process, initargs=(self.read_dsn, self.proof.secret))
        pending: deque = deque()
        planned, exhausted = self.position, False
        try:
            while not self._stopping():
                while not exhausted and len(pending) < 2 * self.jobs:
                    upto = await verify_batch.bound(self.read, tenant, planned, size)
                    if upto is None:
                        exhausted = True
                        break
                    pending.append((upto, loop.run_in_executor(pool, _check_in_process, tenant, planned, upto)))
                    planned = upto
                if not pending:
                    return True
                upto, future = pending.popleft()
                await self._commit(upto, await self._renewing(future))
            return False
        finally:
            for _, future in pending:
                future.cancel()
            # the batches running finish (a second or so); the loop keeps turning meanwhile
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)


async def carry_on(write: asyncpg.Connection, settings: Settings, proof: Proof, *, owner: str,
                   tenant: str | None = None, stop: asyncio.Event | None = None,
                   on_step: Callable[[dict[str, Any]], Any] | None = None, jobs: int | None = None,
                   on_claim: Callable[[asyncpg.Record], Any] | None = None) -> int:
    """Claim and carry every run nobody holds (of `tenant` when given) until none is left or `stop`;
    returns how many finished here."""
    finished = 0
    read_url = settings.audit_database_url or settings.database_url
    while not (stop is not None and stop.is_set()):
        run = await write.fetchrow(CLAIM, owner, settings.verification_lease_seconds, tenant)
        if run is None:
            return finished
        if on_claim is not None:
            on_claim(run)
        read = await connect(read_url, settings, "consent-ledger-verify", reader=True)
        try:
            runner = Runner(run, read=read, write=write, proof=proof, settings=settings, owner=owner, stop=stop,
                            on_step=on_step, read_dsn=asyncpg_dsn(read_url), jobs=jobs)
            if await runner():
                finished += 1
                log.info("verification %s of tenant %r finished", run["id"], run["tenant_id"])
        except LeaseLost:
            log.warning("verification %s of tenant %r: another worker holds it now; leaving it", run["id"],
                        run["tenant_id"])
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
            raise  # the database went away: the next round (or holder) resumes the run
        except Exception as exc:  # noqa: BLE001 - anything else would fail the same way on every retry
            log.exception("verification %s of tenant %r cannot go on; ended with its error", run["id"],
                          run["tenant_id"])
            await write.execute(FAILED, run["id"], owner, f"{type(exc).__name__}: {exc}"[:2000])
        except asyncio.CancelledError:  # Ctrl-C on `audit verify`, a cancelled task: the next holder need not wait
            with contextlib.suppress(Exception):
                await write.execute(RELEASE, run["id"], owner)
            raise
        finally:
            await read.close()
    return finished


async def run_verifications(settings: Settings, stop: asyncio.Event, proof: Proof) -> None:
    """In the worker: every VERIFICATION_INTERVAL_SECONDS, carry on any run nobody holds."""
    owner = owner_name()

    async def job(conn: asyncpg.Connection) -> None:
        await carry_on(conn, settings, proof, owner=owner, stop=stop)

    await every(settings, stop, settings.verification_interval_seconds, name="consent-ledger-verifications",
                job=job, log=log, what="the verification runs' round")
