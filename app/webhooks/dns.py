"""Name lookups for the worker's sends: bounded, briefly cached, one at a time per name.

Every send resolves its endpoint's host so the SSRF guard can check the answer (ssrf.py). On
asyncio's default executor (a handful of threads shared with everything else) a few slow names
would take every thread and stall the sends to all other names. Here lookups have threads of
their own and a timeout, answers are kept for a few seconds, and concurrent lookups of one name
share one thread, so a slow name costs at most one thread however many sends wait on it.

The cache holds addresses only: ssrf.resolve checks them again on every send and the connection
goes to the checked address, so a cached answer never skips the guard.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

AddrInfo = list[tuple[Any, ...]]


class LookupTimeout(TimeoutError):
    """The name did not resolve within the lookup timeout."""


class Resolver:
    def __init__(self, *, threads: int, ttl: float, timeout: float, max_names: int = 4096) -> None:
        self.ttl, self.timeout, self.max_names = ttl, timeout, max_names
        self._executor = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="webhook-dns")
        self._cache: OrderedDict[tuple[str, int], tuple[float, AddrInfo]] = OrderedDict()
        self._running: dict[tuple[str, int], asyncio.Future] = {}

    async def getaddrinfo(self, host: str, port: int) -> AddrInfo:
        key = (host, port)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        running = self._running.get(key)
        if running is None:
            lookup = functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM,
                                       proto=socket.IPPROTO_TCP)
            running = asyncio.get_running_loop().run_in_executor(self._executor, lookup)
            self._running[key] = running
            running.add_done_callback(functools.partial(self._finished, key))
        try:
            # shielded: a caller that gives up leaves the lookup to finish for the others (and the
            # cache) instead of starting another thread on the same slow name
            return await asyncio.wait_for(asyncio.shield(running), self.timeout)
        except TimeoutError:
            raise LookupTimeout(f"DNS lookup timed out after {self.timeout:g}s") from None

    def _finished(self, key: tuple[str, int], future: asyncio.Future) -> None:
        self._running.pop(key, None)
        if future.cancelled() or future.exception() is not None:  # failures are not cached
            return
        self._cache[key] = (time.monotonic() + self.ttl, future.result())
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_names:
            self._cache.popitem(last=False)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
