"""`make run`'s supervisor restarts a webhook worker that dies, with backoff, and says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from app.webhooks.supervisor import WorkerSupervisor
from tests.webhooks.test_faults import ROOT, until

pytestmark = pytest.mark.usefixtures("demo")


async def test_a_killed_worker_is_restarted_with_backoff_and_the_new_one_delivers(
        database_url, client, auth, tenant, register, receiver):
    log_path = Path(tempfile.mkstemp(prefix="cl-supervised-", suffix=".log")[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBHOOK_", "WORKER_"))}
    env.update(DATABASE_URL=database_url, WEBHOOK_ALLOWED_HOSTS="127.0.0.1", WEBHOOK_LEASE_SECONDS="3",
               WEBHOOK_TIMEOUT_SECONDS="2", WEBHOOK_POLL_SECONDS="0.5", WORKER_METRICS_PORT="0",
               PYTHONUNBUFFERED="1")

    def start() -> subprocess.Popen:
        with log_path.open("ab") as log:
            return subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    said: list[str] = []
    supervisor = WorkerSupervisor(start, say=said.append, first_delay=0.2, poll=0.05).start()
    try:
        for kill in (1, 2):
            victim = supervisor.process
            await until(lambda: log_path.read_text().count("started") >= kill, 15, "the worker to start")
            os.kill(victim.pid, signal.SIGKILL)
            await until(lambda: supervisor.process is not victim, 10, "a new worker process")
            assert supervisor.process.poll() is None
        assert supervisor.restarts == 2
        assert said[0].endswith("stopped with signal SIGKILL; restarting it in 0.2s"), said
        assert said[2].endswith("restarting it in 0.4s"), said  # backing off
        assert said[1].startswith("webhook worker restarted (pid "), said

        endpoint = await register(receiver)  # the restarted worker does the work
        await until(lambda: log_path.read_text().count("started") >= 3, 15, "the third worker to start")
        response = await client.post(f"/v1/webhook-endpoints/{endpoint['id']}/test",
                                     headers=auth(tenant, "webhooks:admin"))
        assert response.status_code in (200, 201, 202), response.text
        await receiver.wait_for(1, timeout=10)
    finally:
        last = supervisor.process
        supervisor.stop(timeout=10)
        assert last.poll() is not None  # stopping the supervisor stops its worker
        log_path.unlink(missing_ok=True)
