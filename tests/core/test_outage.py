"""A real database outage under load: PostgreSQL stopped fast, then immediately, and started again
while `consent-ledger serve` (a real uvicorn process) answers keep-alive clients over TCP.

Every answer must be a 2xx or a 503 problem+json with Retry-After; no request may lose its
connection (which is what a re-raised exception does to uvicorn's keep-alive); service comes back
after the restart; no sign-up is half-written. A separate PostgreSQL, so the shared test database
is never disturbed. Bounded: the whole test stops by itself well within a minute.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from app.auth.tokens import issue
from app.cli import migrate, seed
from app.core.embedded_pg import EmbeddedPostgres, free_port
from tests.conftest import ALL_SCOPES
from tests.helpers import decisions_for

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 4
TENANT = "smallticket"  # a demo tenant, loaded by `consent-ledger seed`'s code path


@dataclass
class Outcomes:
    answers: list[tuple[str, int, float]] = field(default_factory=list)  # (operation, status, time)
    bad: list[str] = field(default_factory=list)  # dropped connections and unexpected answers
    signups: dict[str, int] = field(default_factory=dict)  # subject -> status of its POST

    def record(self, operation: str, response: httpx.Response) -> None:
        self.answers.append((operation, response.status_code, time.monotonic()))
        if 200 <= response.status_code < 300:
            return
        if response.status_code != 503:
            self.bad.append(f"{operation}: {response.status_code} {response.text[:300]}")
            return
        body = response.json() if response.headers.get("content-type") == "application/problem+json" else None
        if body is None or body.get("type") != "urn:consent-ledger:problem:database-unavailable" \
                or not response.headers.get("retry-after", "").isdigit():
            self.bad.append(f"{operation}: 503 without problem+json and Retry-After: {response.headers} "
                            f"{response.text[:300]}")


class Server:
    """`python -m app.cli serve` on a free port, output (JSON lines) in a temporary file."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log_path = Path(tempfile.mkstemp(prefix="cl-serve-", suffix=".log")[1])
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1) as c:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"serve exited with {self.proc.returncode}:\n{self.output}"
                try:
                    if (await c.get(f"{self.url}/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"serve did not become ready:\n{self.output}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log_path.unlink(missing_ok=True)


@asynccontextmanager
async def served(settings, *, durable: bool, **env: str) -> AsyncIterator[tuple[EmbeddedPostgres, Server]]:
    """A PostgreSQL of its own (its database owned and migrated by the owner role, demo tenants
    seeded) and `consent-ledger serve` on it as the runtime role, with the test settings' JWT and
    `env`; `pg.url` is a superuser on that database. Everything stopped and removed at exit."""
    tmp = Path(tempfile.mkdtemp(prefix="cl-served-"))
    pg = EmbeddedPostgres(tmp / "pg", free_port(), fast_unsafe=not durable, database="consent_ledger")
    server: Server | None = None
    try:
        await asyncio.to_thread(pg.start)
        owner_url, runtime_url = await asyncio.to_thread(pg.ensure_roles, pg.database)
        await asyncio.to_thread(migrate, owner_url, "consent_ledger_runtime")
        await asyncio.to_thread(seed, dataclasses.replace(settings, database_url=runtime_url))
        server = Server({"DATABASE_URL": runtime_url, "DATABASE_OWNER_URL": owner_url,
                         "JWT_SECRET": settings.jwt_secret, "JWT_ISSUER": settings.jwt_issuer,
                         "JWT_AUDIENCE": settings.jwt_audience, **env})
        await server.ready()
        yield pg, server
    finally:
        if server is not None:
            server.stop()
        await asyncio.to_thread(pg.stop, "immediate")
        shutil.rmtree(tmp, ignore_errors=True)


async def _load(base: str, headers: dict[str, str], signup: dict, known: str, n: int, stop: asyncio.Event,
                out: Outcomes) -> None:
    """One keep-alive connection doing sign-ups, state reads, history reads and form reads in turn."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=10) as c:
        i = 0
        while not stop.is_set():
            i += 1
            operation = ("signup", "state", "history", "form")[i % 4]
            try:
                if operation == "signup":
                    subject = f"load-{n}-{i}-{uuid.uuid4().hex[:6]}"
                    response = await c.post(f"/v1/subjects/{subject}/consents", json=signup)
                    out.signups[subject] = response.status_code
                elif operation == "state":
                    response = await c.get(f"/v1/subjects/{known}/consents")
                elif operation == "history":
                    response = await c.get(f"/v1/subjects/{known}/consents/history", params={"limit": 5})
                else:
                    response = await c.get("/v1/collection-points/signup/form")
            except httpx.TransportError as exc:  # RemoteProtocolError, ReadError ...: the connection was lost
                out.bad.append(f"{operation}: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.05)
                continue
            out.record(operation, response)
            await asyncio.sleep(0.005)


async def test_database_restarts_are_503s_and_never_a_dropped_connection(settings):
    stop = asyncio.Event()
    tasks: list[asyncio.Task] = []
    out = Outcomes()
    # Durable settings: an immediate stop is a crash, and synchronous_commit=off would lose the last
    # acknowledged commits by design.
    async with served(settings, durable=True, DB_POOL_SIZE="8", DB_CATALOG_POOL_SIZE="3", LOG_LEVEL="INFO",
                      PYTHONUNBUFFERED="1") as (pg, server):
        try:
            await _restarts_under_load(settings, pg, server, stop, tasks, out)
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _restarts_under_load(settings, pg: EmbeddedPostgres, server: Server, stop: asyncio.Event,
                               tasks: list[asyncio.Task], out: Outcomes) -> None:
    headers = {"Authorization": f"Bearer {issue(settings, tenant=TENANT, sub='outage', scopes=ALL_SCOPES)}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=10) as c:
        form = (await c.get("/v1/collection-points/signup/form")).json()
        signup = decisions_for(form, {"marketing", "marketing-sms"})
        known = "outage-known"
        assert (await c.post(f"/v1/subjects/{known}/consents", json=signup)).status_code == 201

    async def outage() -> float:
        tasks.extend(asyncio.create_task(_load(server.url, headers, signup, known, n, stop, out))
                     for n in range(CLIENTS))
        await asyncio.sleep(1.0)
        for mode in ("fast", "immediate"):
            await asyncio.to_thread(pg.stop, mode)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(pg.start)
            restarted = time.monotonic()
            await asyncio.sleep(1.0)
        # Back in service: every kind of request succeeds again after the last restart.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            recovered = {op for op, status, at in out.answers if at > restarted and 200 <= status < 300}
            if recovered == {"signup", "state", "history", "form"}:
                await asyncio.sleep(1.5)  # and keeps succeeding (stale pooled connections are gone)
                return restarted
            await asyncio.sleep(0.1)
        raise AssertionError(f"not every request kind succeeded after the restart: {recovered}")

    await asyncio.wait_for(outage(), 40)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 15)

    statuses = Counter(status for _, status, _ in out.answers)
    assert not out.bad, f"{len(out.bad)} bad outcomes, e.g. {out.bad[:5]}; all: {statuses}"
    assert statuses[503] >= 1, f"the outage was never felt: {statuses}"
    assert sum(n for s, n in statuses.items() if 200 <= s < 300) >= 20, statuses
    last = [status for _, status, _ in out.answers[-20:]]
    assert all(200 <= s < 300 for s in last), last
    assert server.proc.poll() is None, "serve exited during the outage"

    # Nothing half-written: every sign-up is all its decisions or nothing at all.
    conn = await asyncpg.connect(pg.url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        counts = dict(await conn.fetch(
            "SELECT s.external_id, count(e.id) FROM subjects s LEFT JOIN consent_events e "
            "ON e.subject_id = s.id WHERE s.tenant_id = $1 AND s.external_id LIKE 'load-%' "
            "GROUP BY s.external_id", TENANT))
    finally:
        await conn.close()
    decisions = len(signup["decisions"])
    assert {n for n in counts.values()} <= {decisions}, counts
    committed = {s for s, status in out.signups.items() if status == 201}
    assert committed <= set(counts), committed - set(counts)

    # The server's own output: JSON lines, no client address (uvicorn's access log is off).
    lines = [line for line in server.output.splitlines() if line.strip()]
    assert lines and all(isinstance(json.loads(line), dict) for line in lines), server.output[-2000:]
    assert "127.0.0.1" not in server.output
    assert any(json.loads(line).get("logger") == "consent_ledger.access" for line in lines)
