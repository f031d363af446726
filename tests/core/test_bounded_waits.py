"""Every wait on the database is bounded: a held row lock, a full pool and a database that stopped
answering (SIGSTOP, as a hung host or a network partition looks) are 503 problem+json with
Retry-After within seconds, and other subjects' requests never wait behind one subject's queue."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from app.auth.tokens import issue
from tests.conftest import ALL_SCOPES
from tests.core.test_outage import served
from tests.core.test_pools import running
from tests.helpers import sign_up


def _unavailable(response: httpx.Response) -> bool:
    return (response.status_code == 503 and response.headers["content-type"] == "application/problem+json"
            and response.headers.get("retry-after", "").isdigit()
            and response.json()["type"].endswith("database-unavailable"))


async def test_a_held_subject_lock_is_a_503_for_its_queue_and_a_bounded_wait_for_anyone_else(settings, auth, demo, db):
    quick = dataclasses.replace(settings, db_pool_size=4, db_catalog_pool_size=1, db_lock_timeout_seconds=0.5,
                                db_acquire_timeout_seconds=0.5)
    async with running(quick) as (_, client):
        headers = auth(demo)
        for subject in ("held", "free"):
            assert (await sign_up(client, headers, subject, granted={"marketing-sms"})).status_code == 201
        await db.execute("BEGIN")
        await db.execute("SELECT 1 FROM subjects WHERE tenant_id = $1 AND external_id = 'held' FOR UPDATE", demo)
        try:
            started = time.monotonic()

            async def withdraw() -> httpx.Response:
                return await client.post("/v1/subjects/held/consents/marketing-sms/withdraw", headers=headers)

            async def read_other() -> tuple[httpx.Response, float]:
                await asyncio.sleep(0.1)  # behind the queue of writers
                t0 = time.monotonic()
                return await client.get("/v1/subjects/free/consents", headers=headers), time.monotonic() - t0

            *writes, (other, other_took) = await asyncio.wait_for(  # fails rather than hangs
                asyncio.gather(*(withdraw() for _ in range(8)), read_other()), 10)
            took = time.monotonic() - started
        finally:
            await db.execute("ROLLBACK")
        assert all(_unavailable(w) for w in writes), [(w.status_code, w.text[:120]) for w in writes]
        assert took < 4, f"the queue behind one lock took {took:.1f}s"
        assert other.status_code in (200, 503), other.text
        assert other_took < 1.5, f"a read of another subject waited {other_took:.1f}s"
        assert "Idempotency-Key" in writes[0].json()["detail"]  # a write's 503 says how to retry safely
        # and the held subject was never half-changed
        state = await client.get("/v1/subjects/held/consents", headers=headers)
        assert {c["purpose"]: c["status"] for c in state.json()["consents"]}["marketing-sms"] == "granted"


def _postgres_pids(pgdata: Path) -> list[int]:
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
    return [postmaster, *map(int, children)]


async def test_a_database_that_stops_answering_is_a_503_in_seconds_and_readyz_says_so(settings):
    stopped: list[int] = []
    async with served(settings, durable=False, DB_POOL_SIZE="6", DB_CATALOG_POOL_SIZE="2",
                      DB_ACQUIRE_TIMEOUT_SECONDS="1", DB_CONNECT_TIMEOUT_SECONDS="1",
                      DB_STATEMENT_TIMEOUT_SECONDS="1") as (pg, server):
        try:
            token = issue(settings, tenant="smallticket", sub="hung", scopes=ALL_SCOPES)
            async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {token}"},
                                         timeout=30) as c:
                assert (await c.get("/v1/subjects/nobody/consents")).status_code == 404
                stopped = _postgres_pids(pg.pgdata)
                for pid in stopped:
                    os.kill(pid, signal.SIGSTOP)

                async def timed(path: str) -> tuple[httpx.Response, float]:
                    t0 = time.monotonic()
                    return await c.get(path), time.monotonic() - t0

                # a pooled connection mid-statement: the client's own statement limit (1 s + 5 s) ends it
                first, took = await timed("/v1/subjects/nobody/consents")
                assert _unavailable(first) and took < 10, (first.status_code, took)
                answers = await asyncio.gather(*(timed(p) for p in (
                    "/readyz", "/v1/subjects/nobody/consents", "/v1/subjects/nobody/consents/history", "/v1/purposes")))
                (ready, ready_took), *rest = answers
                assert ready.status_code == 503 and ready.headers["retry-after"].isdigit() and ready_took < 3
                for response, elapsed in rest:
                    assert _unavailable(response) and elapsed < 4, (response.status_code, response.text[:200], elapsed)
                assert (await c.get("/healthz")).status_code == 200

                for pid in stopped:
                    os.kill(pid, signal.SIGCONT)
                stopped = []
                deadline = time.monotonic() + 15
                while (await c.get("/v1/subjects/nobody/consents")).status_code != 404:
                    assert time.monotonic() < deadline, "the service did not come back after the database did"
                    await asyncio.sleep(0.2)
                assert (await c.get("/readyz")).status_code == 200
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
