"""Several workers on one database: no double sends without failures, order kept per subject."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from tests.helpers import decisions_for, form, sign_up

pytestmark = pytest.mark.usefixtures("demo")


async def test_two_workers_share_the_work_once_each_and_keep_per_subject_order(
        client, auth, tenant, receiver, register, start_worker, db):
    await register(receiver, channels=["sms", "email"], purposes=["marketing-sms", "marketing-email"])
    headers = auth(tenant)
    prefs = await form(client, headers, "preferences")
    subjects = [f"w-{i}" for i in range(12)]

    async def churn(subject: str) -> None:
        await sign_up(client, headers, subject, {"marketing-sms", "marketing-email"})
        for granted in ({"marketing-email"}, {"marketing-sms"}, {"marketing-sms", "marketing-email"}):
            response = await client.post(f"/v1/subjects/{subject}/consents", json=decisions_for(prefs, granted),
                                         headers=headers)
            assert response.status_code == 201

    first, second = start_worker(), start_worker()
    await asyncio.gather(*(churn(s) for s in subjects))
    expected = await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE tenant_id = $1", tenant)
    assert expected == len(subjects) * 6  # sign-up 2, then 1 + 2 + 1 status changes; repeats send nothing
    await receiver.wait_for(expected, timeout=20)
    await asyncio.sleep(0.5)

    ids = [r.id for r in receiver.received]
    assert len(ids) == len(set(ids)) == expected  # nothing lost, nothing sent twice
    assert first.worker.delivered > 0 and second.worker.delivered > 0  # both took part
    by_subject = defaultdict(list)
    for r in receiver.received:
        data = r.json["data"]
        by_subject[(data["subject_id"], data["purpose"])].append(data["version"])
    assert all(versions == sorted(versions) for versions in by_subject.values()), by_subject
    ledger_order = await db.fetch(
        """SELECT m.id::text AS id, s.external_id FROM webhook_deliveries d
           JOIN webhook_messages m ON m.id = d.message_id JOIN subjects s ON s.id = d.subject_id
           WHERE d.tenant_id = $1 ORDER BY s.external_id, d.seq""", tenant)
    arrival = {r.id: i for i, r in enumerate(receiver.received)}
    for subject in subjects:
        order = [arrival[row["id"]] for row in ledger_order if row["external_id"] == subject]
        assert order == sorted(order), subject
