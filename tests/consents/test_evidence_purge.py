"""`consent-ledger evidence purge --before T`, as the runtime role: raw evidence goes, proof stays."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from app.cli import ROOT
from tests.helpers import sign_up


def _purge(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "app.cli", "evidence", "purge", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


async def test_purge_destroys_raw_evidence_and_every_proof_stays_valid(client, auth, demo, db, database_url):
    headers = auth(demo)
    assert (await sign_up(client, headers, "p-1", granted={"marketing"})).status_code == 201
    cutoff = datetime.now(UTC)
    assert (await sign_up(client, headers, "p-2")).status_code == 201  # after the cutoff: kept

    refused = _purge(database_url, "--before", (cutoff + timedelta(days=1)).isoformat())
    assert refused.returncode == 1 and "only be purged up to now" in refused.stderr
    assert _purge(database_url, "--before", "yesterday").returncode == 2

    done = _purge(database_url, "--before", cutoff.isoformat(), "--by", "privacy-officer")
    assert done.returncode == 0, done.stderr
    evidence = {m: (await client.get(f"/v1/subjects/{m}/evidence", headers=headers)).json()["items"]
                for m in ("p-1", "p-2")}
    assert all(i["ip"] is None and i["user_agent"] is None and i["purged_at"] for i in evidence["p-1"])
    assert all(i["ip"] == "203.0.113.7" and i["purged_at"] is None for i in evidence["p-2"])
    for member in ("p-1", "p-2"):
        report = (await client.get(f"/v1/subjects/{member}/consents/verify", headers=headers)).json()
        assert report["valid"], report["breaks"]
    record = await db.fetchrow("SELECT * FROM evidence_purges WHERE purged_by = 'privacy-officer'")
    assert record["before"] == cutoff and record["purged_count"] >= 1
