"""Issue 10 point 1, from outside: the worker process itself announces duties by signed webhook,
and after a SIGKILL the next worker picks up what came due meanwhile (never twice)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import decisions_for, form
from tests.webhooks.test_faults import ROOT, until

pytestmark = pytest.mark.usefixtures("demo")


async def test_the_worker_process_announces_due_and_overdue_duties_and_survives_a_kill(
        database_url, client, auth, tenant, register, receiver, db):
    headers = auth(tenant, "consents:write", "duties:read")
    await register(receiver, event_types=["duty.ad_result_notice", "duty.overdue"])
    log_path = Path(tempfile.mkstemp(prefix="cl-duty-worker-", suffix=".log")[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBHOOK_", "WORKER_", "DUTY_"))}
    env.update(DATABASE_URL=database_url, WEBHOOK_ALLOWED_HOSTS="127.0.0.1", WEBHOOK_POLL_SECONDS="0.5",
               WORKER_METRICS_PORT="0", DUTY_INTERVAL_SECONDS="0.5", PYTHONUNBUFFERED="1")

    def start() -> subprocess.Popen:
        with log_path.open("ab") as log:
            return subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    async def sign_up(member: str, **extra) -> None:
        body = {**decisions_for(await form(client, headers), {"marketing-sms"}), **extra}
        assert (await client.post(f"/v1/subjects/{member}/consents", json=body, headers=headers)).status_code == 201

    worker = start()
    try:
        await sign_up("w-1")
        (notice,) = (await client.get("/v1/duties", headers=headers,
                                      params={"subject_id": "w-1", "kind": "ad_result_notice"})).json()["items"]
        got = await receiver.wait_for(1, timeout=20)
        assert got[0].json["type"] == "duty.ad_result_notice" and got[0].verified_with
        assert got[0].json["data"]["duty_id"] == notice["id"]
        assert got[0].json["data"]["contents"]["acts"][0]["purpose"] == "marketing-sms"

        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        await sign_up("w-2", occurred_at="2023-03-01T10:00:00+09:00")  # its notice and reconfirmation: overdue
        worker = start()
        await until(lambda: sum(r.json["type"] == "duty.overdue" for r in receiver.received) >= 2, 20,
                    "the new worker to announce w-2's overdue duties")
        overdue = [r.json["data"] for r in receiver.received if r.json["type"] == "duty.overdue"]
        assert {d["kind"] for d in overdue} == {"ad_result_notice", "reconfirmation"}
        assert {d["subject_id"] for d in overdue} == {"w-2"}
        # w-1's notice was announced once, by the first worker
        count = await db.fetchval("SELECT count(*) FROM duty_records WHERE duty_id = $1 AND action = 'notified'",
                                  notice["id"])
        assert count == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(15)
        log_path.unlink(missing_ok=True)
