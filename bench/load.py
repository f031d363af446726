"""Closed-loop HTTP load at a fixed number of keep-alive connections, from separate processes.

wrk when it is on PATH (C, almost no client CPU per request); otherwise Python processes speaking
raw HTTP/1.1 over asyncio streams. httpx would cost several times more CPU per request, and on a
2-core machine every cycle the client burns is taken from the server being measured.
"""

from __future__ import annotations

import array
import asyncio
import itertools
import math
import multiprocessing
import queue
import random
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

WRK_SCRIPT = Path(__file__).with_name("wrk.lua")
WRK_THREADS = 2
PYTHON_PROCESSES = 2
REQUEST_TIMEOUT = 10.0
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Scenario:
    """One kind of request: `fresh` POSTs name a new subject each time, reads a random seeded one."""

    name: str
    method: str
    prefix: str  # path up to the subject id
    suffix: str  # path (and query) after it
    fresh: bool
    body: bytes = b""

    def path(self, subject: str) -> str:
        return f"{self.prefix}{subject}{self.suffix}"


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    failures: int  # transport errors and non-2xx replies

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def percentile(sorted_values: list[float] | array.array, q: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


def generator_name() -> str:
    return "wrk" if shutil.which("wrk") else "python"


def run_load(generator: str, port: int, scenario: Scenario, headers: dict[str, str], seconds: int,
             connections: int, tag: str, seeded: int) -> Result:
    """Drive 127.0.0.1:port for `seconds`; `tag` keeps fresh subject ids unique across runs."""
    if generator == "wrk":
        return _wrk(port, scenario, headers, seconds, connections, tag, seeded)
    return _python(port, scenario, headers, seconds, connections, tag, seeded)


# --- wrk ----------------------------------------------------------------------------------------


def _wrk(port: int, scenario: Scenario, headers: dict[str, str], seconds: int, connections: int, tag: str,
         seeded: int) -> Result:
    command = ["wrk", "-t", str(min(WRK_THREADS, connections)), "-c", str(connections), "-d", f"{seconds}s",
               "--timeout", f"{int(REQUEST_TIMEOUT)}s", "-s", str(WRK_SCRIPT)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    command += [f"http://127.0.0.1:{port}", "--", scenario.method, scenario.prefix, scenario.suffix,
                "fresh" if scenario.fresh else "seeded", tag, str(seeded), scenario.body.decode()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    line = next((line for line in done.stdout.splitlines() if line.startswith("WRK_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")
    requests, duration_us, p50_us, p99_us, errors, bad_status = map(int, line.split()[1:])
    return Result(requests=requests, seconds=duration_us / 1e6, p50_ms=p50_us / 1e3, p99_ms=p99_us / 1e3,
                  failures=errors + bad_status)


# --- Python fallback ----------------------------------------------------------------------------


def encode_request(method: str, path: str, port: int, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1; just enough protocol for uvicorn's replies
    (which always carry Content-Length for these JSON bodies)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> "Connection":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    async def request(self, data: bytes) -> tuple[int, bytes]:
        return await asyncio.wait_for(self._exchange(data), REQUEST_TIMEOUT)

    async def get(self, path: str, headers: dict[str, str], log_tail: Callable[[], str] | None = None,
                  ) -> tuple[float, bytes]:
        """GET `path`, timed: (seconds, body) of a 200 reply, any other status a RuntimeError (with the
        server's log tail). A connection the server closed while idle (uvicorn after 5 s) is opened
        again once, and the clock restarted."""
        data = encode_request("GET", path, self.port, headers)
        started = time.perf_counter()
        try:
            status, body = await self.request(data)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.close()
            await self.open()
            started = time.perf_counter()
            status, body = await self.request(data)
        seconds = time.perf_counter() - started
        if status != 200:
            raise RuntimeError(f"GET {path} -> {status}: {body[:300]!r}"
                               + (f"\nserver log:\n{log_tail()}" if log_tail else ""))
        return seconds, body

    async def _exchange(self, data: bytes) -> tuple[int, bytes]:
        self.writer.write(data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = CONTENT_LENGTH.search(head)
        if length is None:
            raise RuntimeError(f"reply without Content-Length: {head[:200]!r}")
        return int(head[9:12]), await self.reader.readexactly(int(length.group(1)))


def _python(port: int, scenario: Scenario, headers: dict[str, str], seconds: int, connections: int, tag: str,
            seeded: int) -> Result:
    processes = min(PYTHON_PROCESSES, connections)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes + 1)  # every socket is open before the clock starts
    results = context.Queue()
    workers = [
        context.Process(target=_worker, daemon=True, args=(
            port, scenario, headers, seconds, connections * (i + 1) // processes - connections * i // processes,
            f"{tag}-p{i}", seeded, start, results))
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        start.wait(timeout=60)
        latencies, failures = array.array("d"), 0
        for _ in workers:
            try:
                part, part_failures = results.get(timeout=seconds + 60)
            except queue.Empty:
                raise RuntimeError("a load generator process failed (its traceback is above)") from None
            latencies.extend(part)
            failures += part_failures
        for worker in workers:
            worker.join(10)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
    ordered = sorted(latencies)
    if not ordered:
        raise RuntimeError(f"{scenario.name}: no request completed")
    return Result(requests=len(ordered), seconds=float(seconds), p50_ms=percentile(ordered, 50) * 1e3,
                  p99_ms=percentile(ordered, 99) * 1e3, failures=failures)


def _worker(port: int, scenario: Scenario, headers: dict[str, str], seconds: int, connections: int, tag: str,
            seeded: int, start, results) -> None:
    try:
        import uvloop  # installed with uvicorn[standard]; halves the client's own overhead
    except ImportError:
        uvloop = None
    run = uvloop.run if uvloop else asyncio.run
    results.put(run(_drive(port, scenario, headers, seconds, connections, tag, seeded, start)))


async def _drive(port: int, scenario: Scenario, headers: dict[str, str], seconds: int, connections: int, tag: str,
                 seeded: int, start) -> tuple[array.array, int]:
    pool = [await Connection(port).open() for _ in range(connections)]
    start.wait(timeout=60)
    deadline = time.perf_counter() + seconds
    latencies, failures = array.array("d"), 0
    numbers = itertools.count(1)

    async def loop(conn: Connection) -> None:
        nonlocal failures
        while True:
            subject = f"{tag}-{next(numbers)}" if scenario.fresh else f"seed-{random.randrange(seeded)}"
            data = encode_request(scenario.method, scenario.path(subject), port, headers, scenario.body)
            sent = time.perf_counter()
            try:
                status, _ = await conn.request(data)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                failures += 1
                conn.close()
                await conn.open()
                continue
            finished = time.perf_counter()
            if finished > deadline:  # only requests completed inside the window count
                return
            latencies.append(finished - sent)
            failures += not 200 <= status < 300

    await asyncio.gather(*(loop(conn) for conn in pool))
    for conn in pool:
        conn.close()
    return latencies, failures
