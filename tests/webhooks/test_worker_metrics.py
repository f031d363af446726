"""The worker's Prometheus metrics, scraped from the real port of a real worker process."""

from __future__ import annotations

import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.core.embedded_pg import free_port
from app.webhooks.signing import new_secret
from tests.webhooks.receiver import Answer, Receiver
from tests.webhooks.test_faults import until, worker_process  # noqa: F401 - a fixture


async def _endpoint(db, tenant: str, receiver: Receiver) -> uuid.UUID:
    secret = new_secret()
    receiver.secrets.append(secret)
    return await db.fetchval("INSERT INTO webhook_endpoints (tenant_id, url, secret, kinds) "
                             "VALUES ($1, $2, $3, '{}') RETURNING id", tenant, receiver.url, secret)


async def _messages(db, tenant: str, endpoint_id: uuid.UUID, *types: str, due_ago: float = 0) -> None:
    for type_ in types:
        message_id = await db.fetchval("INSERT INTO webhook_messages (tenant_id, type, body) VALUES ($1, $2, '{}') "
                                       "RETURNING id", tenant, type_)
        await db.execute("INSERT INTO webhook_deliveries (tenant_id, message_id, endpoint_id, next_attempt_at) "
                         "VALUES ($1, $2, $3, now() - make_interval(secs => $4))", tenant, message_id, endpoint_id,
                         due_ago)


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_worker_metrics_on_its_own_port(tenant, db, worker_process):
    ok, failing = await Receiver().start(), await Receiver(lambda _: Answer(500)).start()
    gone, hanging = await Receiver(lambda _: Answer(410)).start(), await Receiver(lambda _: Answer(delay=5)).start()
    port = free_port()
    try:
        ok_id, failing_id = await _endpoint(db, tenant, ok), await _endpoint(db, tenant, failing)
        gone_id, hanging_id = await _endpoint(db, tenant, gone), await _endpoint(db, tenant, hanging)
        await _messages(db, tenant, ok_id, "consent.granted", "consent.granted", "consent.withdrawn")
        await _messages(db, tenant, failing_id, "consent.withdrawn", "consent.granted")
        await _messages(db, tenant, gone_id, "webhook.test", "webhook.test")
        await _messages(db, tenant, hanging_id, "consent.granted", "consent.granted", "consent.granted",
                        due_ago=120)
        process = worker_process(WORKER_METRICS_PORT=str(port), WORKER_METRICS_INTERVAL_SECONDS="0.3",
                                 WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT="1")
        await process.started()
        label = str(hanging_id)

        async def scrape() -> dict | None:
            async with httpx.AsyncClient() as http:
                response = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            assert response.status_code == 200
            got = _samples(response.text)
            return got if ready(got) else None

        def dead_letters(got: dict) -> bool:
            return all(got.get(("consent_ledger_webhook_dead_letters_total", (("event_type", t),))) == 1
                       for t in ("consent.withdrawn", "consent.granted"))

        def refreshed(got: dict) -> bool:  # the backlog read after the 410 disabled its endpoint
            return got.get(("consent_ledger_webhook_endpoints_disabled", ()), 0) >= 1 and \
                ("consent_ledger_webhook_oldest_due_seconds", (("endpoint", label), ("tenant", tenant))) in got

        ready = dead_letters
        got = await until(scrape, 15, "the worker's metrics to show the dead letters")
        attempts = {labels[0][1]: v for (name, labels), v in got.items()
                    if name == "consent_ledger_webhook_attempts_total"}
        assert attempts == {"delivered": 3, "http_error": 3 * 2 + 1}, attempts
        dead = {labels[0][1]: v for (name, labels), v in got.items()
                if name == "consent_ledger_webhook_dead_letters_total"}
        # withdrawals counted apart; the 410 answer was its delivery's last attempt too
        assert dead == {"consent.withdrawn": 1, "consent.granted": 1, "webhook.test": 1}
        assert got[("consent_ledger_webhook_endpoint_disables_total", (("reason", "gone"),))] == 1
        assert got[("consent_ledger_webhook_attempt_duration_seconds_count", (("outcome", "delivered"),))] == 3

        ready = refreshed
        backlog = await until(scrape, 5, "a backlog refresh")
        oldest = backlog[("consent_ledger_webhook_oldest_due_seconds", (("endpoint", label), ("tenant", tenant)))]
        assert 100 <= oldest < 300, oldest  # two of the hanging endpoint's three wait, due for two minutes
        assert backlog[("consent_ledger_webhook_deliveries", (("state", "paused"),))] >= 1  # the 410 one's other
        assert backlog[("consent_ledger_webhook_deliveries", (("state", "in_flight"),))] >= 1
        assert backlog[("consent_ledger_webhook_deliveries", (("state", "due"),))] >= 2
    finally:
        for r in (ok, failing, gone, hanging):
            await r.stop()
        await db.execute("UPDATE webhook_deliveries SET status = 'failed' WHERE tenant_id = $1 AND status = 'pending'",
                         tenant)


async def test_the_worker_process_purges_on_its_schedule(tenant, db, worker_process):
    """`consent-ledger worker` runs the purge itself: a message delivered long ago goes, a recent one
    stays, and the worker keeps running."""
    endpoint_id = await db.fetchval(
        "INSERT INTO webhook_endpoints (tenant_id, url, secret, kinds, enabled) "
        "VALUES ($1, 'https://hooks.example.com/x', 'whsec_dGVzdA==', '{}', false) RETURNING id", tenant)
    ages = {"old": 40 * 86400, "recent": 3600}
    messages = {}
    for name, age in ages.items():
        messages[name] = await db.fetchval(
            "INSERT INTO webhook_messages (tenant_id, type, body, created_at) "
            "VALUES ($1, 'consent.granted', '{}', now() - make_interval(secs => $2)) RETURNING id", tenant, age)
        await db.execute(
            "INSERT INTO webhook_deliveries (tenant_id, message_id, endpoint_id, status, created_at, delivered_at, "
            "next_attempt_at) VALUES ($1, $2, $3, 'delivered', now() - make_interval(secs => $4), "
            "now() - make_interval(secs => $4), now())",
            tenant, messages[name], endpoint_id, age)
    process = worker_process(PURGE_INTERVAL_SECONDS="0.5")
    await process.started()

    async def purged() -> bool | None:
        return True if await db.fetchval("SELECT count(*) FROM webhook_messages WHERE id = $1",
                                         messages["old"]) == 0 else None

    await until(purged, 15, "the worker to purge the old delivered message")
    assert await db.fetchval("SELECT count(*) FROM webhook_messages WHERE id = $1", messages["recent"]) == 1
    assert process.proc.poll() is None
