"""The two services under test, each one uvicorn process with one worker on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.proof import keys

ROOT = Path(__file__).resolve().parents[1]


def proof_keys(directory: Path) -> dict[str, str]:
    """The keys both services prove with (docs/proof.md): an Ed25519 signing key and a ledger
    secret, made in `directory` (0600) on first call; returned as the environment they read."""
    key, secret = directory / "signing-key.pem", directory / "ledger-secret"
    if not key.exists():
        keys.generate_key_file(key)
    if not secret.exists():
        keys.generate_secret_file(secret)
    return {"SIGNING_KEY_FILE": str(key), "LEDGER_SECRET_FILE": str(secret)}


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the process group (uvicorn and anything it forked), SIGKILL if it lingers."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


def start(name: str, factory: str, port: int, env: dict[str, str], log_dir: Path) -> Server:
    """`factory` is a module:function returning the ASGI app; waits until /healthz answers. A
    DATABASE_URL that database.create() returned (either spelling: SQLAlchemy's for the project,
    asyncpg's for the baseline) is served as its runtime role, as in production."""
    from bench.database import runtime_url

    if "DATABASE_URL" in env:
        env = {**env, "DATABASE_URL": runtime_url(env["DATABASE_URL"])}
    log = log_dir / f"{name}.log"
    command = [sys.executable, "-m", "uvicorn", factory, "--factory", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--no-access-log", "--log-level", "warning"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(name, port, process, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{name} did not become ready on port {port}:\n{server.log_tail()}")
