"""Tenant-wide verification in the real worker process (killed mid-run and resumed) and through
`consent-ledger audit verify` as a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from app.cli import ROOT
from tests.consents.test_rogue_dba import as_rogue, subject_row
from tests.helpers import sign_up
from tests.webhooks.test_faults import until, worker_process  # noqa: F401 (a fixture)

SUBJECTS = 40
RUN = "SELECT * FROM verification_runs WHERE id = $1"


async def seed(client, headers, prefix: str, count: int) -> None:
    for i in range(count):
        response = await sign_up(client, headers, f"{prefix}{i:03d}", granted={"marketing"})
        assert response.status_code == 201, response.text


async def test_a_killed_worker_leaves_the_run_to_the_next_which_finishes_it_counting_once(
        client, auth, db, demo, worker_process, database_url):  # noqa: F811
    headers = auth(demo, "consents:write", "audit:read")
    await seed(client, headers, "r-", SUBJECTS)
    victim = await subject_row(db, demo, "r-017")
    await as_rogue(db, ("UPDATE consent_events SET purpose_key = 'other' WHERE subject_id = $1 AND seq = 1",
                        victim["id"]))
    run = (await client.post("/v1/audit/verifications", json={"batch_subjects": 1}, headers=headers)).json()
    env = {"VERIFICATION_INTERVAL_SECONDS": "0.2", "VERIFICATION_LEASE_SECONDS": "2",
           "AUDIT_DATABASE_URL": database_url, "CHECKPOINT_INTERVAL_SECONDS": "3600"}
    first = worker_process(**env)
    await first.started()
    await until(lambda: _progress(db, run["id"]), 30, "the first worker's progress", interval=0.005)
    # hold the run's row: the worker's next step waits on it, so it dies between two steps or in one
    async with db.transaction():
        held = await db.fetchrow(RUN + " FOR UPDATE", run["id"])
        os.killpg(first.proc.pid, 9)
        first.proc.wait(10)
    assert 0 < held["subjects_done"] < SUBJECTS and held["status"] == "running", dict(held)
    second = worker_process(**env)
    await second.started()
    await until(lambda: _finished(db, run["id"]), 60, "the second worker to finish the run")
    done = (await client.get(f"/v1/audit/verifications/{run['id']}", headers=headers)).json()
    events = await db.fetchval("SELECT count(*) FROM consent_events WHERE tenant_id = $1", demo)
    assert done["progress"]["subjects_done"] == SUBJECTS and done["progress"]["events_done"] == events
    assert done["valid"] is False and done["broken_total"] == 1
    assert [(s["subject_id"], s["kinds"]) for s in done["broken"]] == [("r-017", ["altered_event", "catalog_mismatch"])]


async def _progress(db, run_id) -> bool:
    row = await db.fetchrow(RUN, run_id)
    return row["subjects_done"] >= 3


async def _finished(db, run_id) -> bool:
    return (await db.fetchrow(RUN, run_id))["status"] == "finished"


def _cli(database_url: str, tenant: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "app.cli", "audit", "verify", "--tenant", tenant, *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


async def test_the_cli_prints_a_summary_and_exits_by_the_result(client, auth, db, demo, database_url):
    headers = auth(demo, "consents:write", "audit:read")
    await seed(client, headers, "c-", 6)
    clean = await asyncio.to_thread(_cli, database_url, demo, "--batch-subjects", "2")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "\r" not in clean.stdout  # no progress line when not on a terminal
    assert f"tenant {demo!r}: VALID" in clean.stdout and "6 subjects" in clean.stdout
    c2 = await subject_row(db, demo, "c-002")
    await as_rogue(db, ("DELETE FROM consent_events WHERE subject_id = $1 AND seq = 2", c2["id"]))
    broken = await asyncio.to_thread(_cli, database_url, demo, "--jobs", "2")  # in worker processes
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "BROKEN" in broken.stdout and "broken subject c-002: " in broken.stdout
    assert "missing_event" in broken.stdout
    missing = await asyncio.to_thread(_cli, database_url, "no-such-tenant")
    assert missing.returncode == 2 and "no tenant" in missing.stderr


def _cli_on_a_terminal(database_url: str, tenant: str) -> tuple[int, str]:
    """The CLI with its standard output on a pseudo-terminal, as a person runs it."""
    import pty

    leader, follower = pty.openpty()
    env = {**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "audit", "verify", "--tenant", tenant,
                                "--batch-subjects", "1"], cwd=ROOT, env=env, stdout=follower,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    return process.wait(60), out.decode(errors="replace")


async def test_the_cli_shows_a_progress_line_on_a_terminal(client, auth, demo, database_url):
    await seed(client, auth(demo, "consents:write"), "t-", 4)
    code, out = await asyncio.to_thread(_cli_on_a_terminal, database_url, demo)
    assert code == 0, out
    # the terminal turns each newline into "\r\n"; the progress line is rewritten with a bare "\r"
    updates = [line.split("\n")[0] for line in out.replace("\r\n", "\n").split("\r")[1:]]
    # at most ten a second: a run this small shows its start and its end, a longer one more between
    assert len(updates) >= 2 and all("%" in u and "events/s" in u and "ETA" in u for u in updates), updates
    assert "subjects 0/4" in updates[0] and "100.0%" in updates[-1] and "subjects 4/4" in updates[-1], updates
    assert "VALID" in out


async def test_ctrl_c_leaves_the_run_to_the_next_command_which_resumes_it(client, auth, db, demo, database_url):
    headers = auth(demo, "consents:write", "audit:read")
    members = 60  # one-subject steps: the run is still walking subjects when the test takes its row
    await seed(client, headers, "i-", members)
    env = {**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "audit", "verify", "--tenant", demo,
                                "--batch-subjects", "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                               # Ctrl-C as at a terminal, even when this suite runs as a background job
                               # (which starts with SIGINT ignored, and a child inherits that)
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        run_id = await until(lambda: db.fetchval("SELECT id FROM verification_runs WHERE tenant_id = $1 AND "
                                                 "subjects_done >= 2", demo), 30, "the command's progress",
                             interval=0.005)
        async with db.transaction():  # its next step waits on the row: interrupted between two steps
            interrupted = await db.fetchrow(RUN + " FOR UPDATE", run_id)
            process.send_signal(2)  # SIGINT, as Ctrl-C
            await asyncio.sleep(0.5)
        code = await asyncio.to_thread(process.wait, 30)
        assert interrupted["stage"] == "subjects" and interrupted["subjects_done"] < members, dict(interrupted)
        assert code == 130, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
    row = await db.fetchrow(RUN, run_id)
    assert row["status"] == "running" and row["lease_until"] is None and row["subjects_done"] < members, dict(row)
    again = await asyncio.to_thread(_cli, database_url, demo)  # no wait for a lease: resumed at once
    assert again.returncode == 0 and f"(verification {run_id})" in again.stdout, again.stdout + again.stderr
    row = await db.fetchrow(RUN, run_id)
    events = await db.fetchval("SELECT count(*) FROM consent_events WHERE tenant_id = $1", demo)
    assert (row["subjects_done"], row["events_done"]) == (members, events)
