"""The API process's Prometheus metrics, and who may read them.

Per process, in a registry of its own (the webhook worker exposes its metrics on its own port).
Labels never carry subject ids or raw paths: requests are counted by route template.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from contextvars import ContextVar

from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, GCCollector, Histogram, PlatformCollector, ProcessCollector,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response

from app.core.errors import Forbidden, Unauthorized
from app.core.settings import Settings

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

LABELS = ("route", "method", "status")
HTTP_REQUESTS = Counter(
    "consent_ledger_http_requests", "HTTP requests answered, by route template, method and status",
    LABELS, registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "consent_ledger_http_request_duration_seconds",
    "Time from the request's arrival to the end of its response, by route template, method and status",
    LABELS, registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
CONSENT_EVENTS = Counter(
    "consent_ledger_consent_events", "Consent events committed to the ledger, by action and purpose kind",
    ("action", "kind"), registry=REGISTRY,
)

UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics:
    """Labelled children cached by key: `labels()` takes a lock and builds a tuple on every call."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str | None, method: str, status: int, seconds: float) -> None:
        key = (route or UNMATCHED, method if method in METHODS else "OTHER", status)
        children = self._children.get(key)
        if children is None:
            labels = (key[0], key[1], str(status))
            children = self._children[key] = (HTTP_REQUESTS.labels(*labels), HTTP_DURATION.labels(*labels))
        children[0].inc()
        children[1].observe(seconds)


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
