"""The API process's Prometheus metrics, and who may read them.

Per process, in a registry of its own (the webhook worker exposes its metrics on its own port).
Labels never carry subject ids or raw paths: requests are counted by route template.
"""

from __future__ import annotations

import hmac
import ipaddress
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from starlette.requests import Request
from starlette.responses import Response

from app.core.errors import Forbidden, Unauthorized
from app.core.settings import Settings

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

CONSENT_EVENTS = Counter(
    "consent_ledger_consent_events", "Consent events committed to the ledger, by action and purpose kind",
    ("action", "kind"), registry=REGISTRY,
)

LABELS = ("route", "method", "status")
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics:
    """Requests by route template, method and status, with their latency histogram.

    Kept as plain counts and turned into metric families only when scraped: prometheus_client's
    labelled Counter and Histogram take a lock per update, ~2.5 us a request on the hot read path,
    where this costs a dictionary lookup and a bisection. Updated and read on the event loop only.
    """

    def __init__(self) -> None:
        # key -> [count per bucket (not cumulative) ..., count above the last bucket, sum of seconds]
        self._series: dict[tuple[str, str, int], list[float]] = {}

    def observe(self, route: str | None, method: str, status: int, seconds: float) -> None:
        key = (route or UNMATCHED, method if method in METHODS else "OTHER", status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = [0] * (len(BUCKETS) + 1) + [0.0]
        series[bisect_left(BUCKETS, seconds)] += 1
        series[-1] += seconds

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily("consent_ledger_http_requests",
                                       "HTTP requests answered, by route template, method and status", labels=LABELS)
        duration = HistogramMetricFamily(
            "consent_ledger_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response, by route template, method and status",
            labels=LABELS)
        for (route, method, status), series in list(self._series.items()):
            labels = [route, method, str(status)]
            cumulative, buckets = 0, []
            for bound, count in zip((*map(str, BUCKETS), "+Inf"), series[:-1]):
                cumulative += count
                buckets.append((bound, cumulative))
            requests.add_metric(labels, cumulative)
            duration.add_metric(labels, buckets, sum_value=series[-1])
        yield requests
        yield duration


HTTP = HttpMetrics()
REGISTRY.register(HTTP)


# Consent events a request wrote, counted only once its response says the transaction committed
# (the unit of work commits before the response starts; see app/core/db.py). Edge sets the list.
pending_consent_events: ContextVar[list[tuple[str, str]] | None] = ContextVar("pending_consent_events",
                                                                             default=None)


def consent_events_written(events: Iterable[tuple[str, str]]) -> None:
    """(action, purpose kind) of each event this request appended; counted after the commit."""
    pending = pending_consent_events.get()
    if pending is not None:
        pending.extend(events)


def count_committed(pending: list[tuple[str, str]]) -> None:
    for action, kind in pending:
        CONSENT_EVENTS.labels(action, kind).inc()


def _loopback(request: Request) -> bool:
    try:
        return request.client is not None and ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


def endpoint(settings: Settings):
    """GET /metrics. With METRICS_TOKEN set it needs `Authorization: Bearer <METRICS_TOKEN>` from
    anyone; without, it answers loopback clients only unless METRICS_PUBLIC=true."""
    expected = f"Bearer {settings.metrics_token}".encode() if settings.metrics_token else None

    async def metrics(request: Request) -> Response:
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                raise Unauthorized("/metrics needs Authorization: Bearer <METRICS_TOKEN>")
        elif not settings.metrics_public and not _loopback(request):
            raise Forbidden("/metrics answers loopback clients only; set METRICS_TOKEN (or METRICS_PUBLIC=true "
                            "behind a network that keeps it private)")
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return metrics
