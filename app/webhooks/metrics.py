"""The webhook worker's Prometheus metrics, served on a port of its own (WORKER_METRICS_PORT).

Counters are this process's (attempts, dead letters, endpoints it disabled); the outbox backlog
is the whole database's, re-read every WORKER_METRICS_INTERVAL_SECONDS by one query, so with
several workers take the max of their backlog gauges, not the sum. Alert on:
- `consent_ledger_webhook_dead_letters_total{event_type="consent.withdrawn"}` increasing: a
  processor never heard of a withdrawal and may keep sending ads;
- `consent_ledger_webhook_oldest_due_seconds` high: an endpoint's queue is not moving;
- `consent_ledger_webhook_endpoints_disabled` above zero.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.core.settings import Settings
from app.webhooks.sender import Result

log = logging.getLogger("consent_ledger.webhooks")

# One pass over the pending deliveries (the partial index on (endpoint_id, next_attempt_at)).
BACKLOG = """
SELECT d.endpoint_id::text, e.tenant_id,
       count(*) FILTER (WHERE d.next_attempt_at <= now()) AS due,
       count(*) FILTER (WHERE d.lease_token IS NOT NULL AND d.next_attempt_at > now()) AS in_flight,
       count(*) FILTER (WHERE d.next_attempt_at = 'infinity') AS paused,
       extract(epoch FROM now() - min(d.next_attempt_at) FILTER (WHERE d.next_attempt_at <= now()))::float8
           AS oldest_due
FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
WHERE d.status = 'pending'
GROUP BY d.endpoint_id, e.tenant_id
"""
DISABLED = "SELECT count(*) FROM webhook_endpoints WHERE NOT enabled AND deleted_at IS NULL"


class Backlog(Collector):
    """The last snapshot of the outbox, so a scrape never waits on the database."""

    def __init__(self) -> None:
        self.rows: list[asyncpg.Record] = []
        self.disabled = 0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = GaugeMetricFamily("consent_ledger_webhook_deliveries",
                                   "Pending deliveries: due now, being sent, paused (endpoint disabled)",
                                   labels=["state"])
        for state in ("due", "in_flight", "paused"):
            states.add_metric([state], sum(r[state] for r in self.rows))
        yield states
        oldest = GaugeMetricFamily("consent_ledger_webhook_oldest_due_seconds",
                                   "How long the longest-waiting due delivery of each endpoint has been due",
                                   labels=["endpoint", "tenant"])
        for r in self.rows:
            if r["oldest_due"] is not None:
                oldest.add_metric([r["endpoint_id"], r["tenant_id"]], r["oldest_due"])
        yield oldest
        yield GaugeMetricFamily("consent_ledger_webhook_endpoints_disabled",
                                "Endpoints disabled (by an operator, a 410 or a long failure) and not deleted",
                                value=self.disabled)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        self.attempts = Counter("consent_ledger_webhook_attempts", "Delivery attempts by outcome "
                                "(delivered, http_error, timeout, refused by the SSRF guard, error)",
                                ["outcome"], registry=r)
        self.latency = Histogram("consent_ledger_webhook_attempt_duration_seconds",
                                 "Time of one delivery attempt, DNS to the end of the answer, by outcome",
                                 ["outcome"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30))
        self.dead_letters = Counter("consent_ledger_webhook_dead_letters", "Deliveries that used their last "
                                    "attempt, by event type (consent.withdrawn is the one to alert on)",
                                    ["event_type"], registry=r)
        self.disables = Counter("consent_ledger_webhook_endpoint_disables", "Endpoints this worker disabled: "
                                "gone (the receiver answered 410) or failing (no success for too long)",
                                ["reason"], registry=r)
        self.backlog = Backlog()
        r.register(self.backlog)

    def attempt(self, result: Result) -> None:
        self.attempts.labels(result.outcome).inc()
        self.latency.labels(result.outcome).observe((result.latency_ms or 0.0) / 1000)

    async def refresh(self, conn: asyncpg.Connection) -> None:
        self.backlog.rows = await conn.fetch(BACKLOG)
        self.backlog.disabled = await conn.fetchval(DISABLED)


def serve(metrics: WorkerMetrics, settings: Settings) -> tuple[WSGIServer, threading.Thread] | None:
    """Expose `metrics` on WORKER_METRICS_HOST:WORKER_METRICS_PORT (0: not at all). A port in use
    (a second worker on the host) is reported, not fatal: deliveries matter more than metrics."""
    if not settings.worker_metrics_port:
        return None
    try:
        served = start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host,
                                   registry=metrics.registry)
    except OSError as exc:
        log.warning("webhook worker: metrics not served on %s:%d (%s)", settings.worker_metrics_host,
                    settings.worker_metrics_port, exc)
        return None
    log.info("webhook worker: metrics on http://%s:%d/metrics", settings.worker_metrics_host,
             settings.worker_metrics_port)
    return served
