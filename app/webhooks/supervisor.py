"""Keeps one webhook worker process running beside `make run`'s server.

In production a process manager (systemd, Kubernetes) restarts a worker that dies; in development
`consent-ledger dev` plays that part: a thread polls the worker process and starts a new one
whenever it exits, for whatever reason, waiting longer after each quick death (1 s, 2 s, 4 s ...
up to 30 s; back to 1 s once a worker has lived a minute), and says so on the console.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class WorkerSupervisor:
    def __init__(self, start: Callable[[], subprocess.Popen], *, say: Callable[[str], None] = print,
                 first_delay: float = 1.0, max_delay: float = 30.0, healthy_after: float = 60.0,
                 poll: float = 0.5) -> None:
        self._start, self._say = start, say
        self.first_delay, self.max_delay, self.healthy_after, self.poll = first_delay, max_delay, healthy_after, poll
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def start(self) -> "WorkerSupervisor":
        self.process = self._start()
        self._thread.start()
        return self

    def _watch(self) -> None:
        delay, started = self.first_delay, time.monotonic()
        while not self._stopping.wait(self.poll):
            process = self.process
            code = process.poll()
            if code is None:
                if time.monotonic() - started > self.healthy_after:
                    delay = self.first_delay
                continue
            self._say(f"webhook worker (pid {process.pid}) stopped with {_describe(code)}; "
                      f"restarting it in {delay:g}s")
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self.process, started = self._start(), time.monotonic()
                self.restarts += 1
            self._say(f"webhook worker restarted (pid {self.process.pid})")
            delay = min(delay * 2, self.max_delay)

    def stop(self, timeout: float = 30) -> None:
        """Stop watching, then stop the worker (SIGTERM: it finishes its sends), killing it after `timeout`."""
        with self._lock:
            self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
