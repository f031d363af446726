"""GET /metrics: Prometheus text, guarded by default, requests by route template and consent events
counted once committed."""

from __future__ import annotations

import dataclasses
import re
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.consents import idempotency
from app.core.metrics import REGISTRY
from app.main import create_app
from tests.core.test_errors import problem
from tests.helpers import sign_up

OUTSIDE = ("203.0.113.7", 50000)
LOOPBACK = ("127.0.0.1", 50000)


async def scrape(app, client_addr=LOOPBACK, headers=None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=client_addr)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        return await c.get("/metrics", headers=headers)


def _ok(response: httpx.Response) -> dict[str, object]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


# --- who may read it ---------------------------------------------------------------------------

async def test_by_default_only_loopback_clients_are_answered(app):
    families = _ok(await scrape(app, LOOPBACK))
    assert "consent_ledger_http_requests" in families and "consent_ledger_consent_events" in families
    body = problem(await scrape(app, OUTSIDE), 403, "forbidden")
    assert "METRICS_TOKEN" in body["detail"]
    problem(await scrape(app, ("testclient", 1)), 403, "forbidden")  # not an address at all


async def test_metrics_public_answers_anyone(settings):
    public = create_app(dataclasses.replace(settings, metrics_public=True))
    _ok(await scrape(public, OUTSIDE))


async def test_metrics_token_is_required_from_everyone_when_set(settings):
    guarded = create_app(dataclasses.replace(settings, metrics_token="scrape-secret-123"))
    for addr in (OUTSIDE, LOOPBACK):
        for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "scrape-secret-123"}):
            response = await scrape(guarded, addr, headers)
            problem(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].startswith("Bearer")
        _ok(await scrape(guarded, addr, {"Authorization": "Bearer scrape-secret-123"}))


# --- what it counts ------------------------------------------------------------------------------

def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_requests_are_counted_by_route_template_never_by_subject(app, client, auth, demo):
    subject = f"member-{uuid.uuid4().hex[:8]}"
    labels = {"route": "/v1/subjects/{subject_id}/consents", "method": "GET", "status": "404"}
    before = _value("consent_ledger_http_requests_total", **labels)
    before_hist = _value("consent_ledger_http_request_duration_seconds_count", **labels)
    for _ in range(3):
        assert (await client.get(f"/v1/subjects/{subject}/consents", headers=auth(demo))).status_code == 404
    assert _value("consent_ledger_http_requests_total", **labels) == before + 3
    assert _value("consent_ledger_http_request_duration_seconds_count", **labels) == before_hist + 3
    await client.get(f"/no/such/{subject}")
    text = (await scrape(app)).text
    assert subject not in text
    assert re.search(r'consent_ledger_http_requests_total\{method="GET",route="unmatched",status="404"\}', text)
    assert 'consent_ledger_http_request_duration_seconds_bucket{le="0.005",' in text


async def test_consent_events_are_counted_by_action_and_kind_after_the_commit(client, auth, demo):
    headers = auth(demo)
    granted_marketing = _value("consent_ledger_consent_events_total", action="granted", kind="marketing")
    refused_optional = _value("consent_ledger_consent_events_total", action="refused", kind="optional")
    withdrawn_marketing = _value("consent_ledger_consent_events_total", action="withdrawn", kind="marketing")

    response = await sign_up(client, headers, f"m-{uuid.uuid4().hex[:8]}", {"marketing", "marketing-sms"})
    assert response.status_code == 201, response.text
    events = response.json()["events"]
    subject = response.json()["subject_id"]
    kinds = {p["key"]: p["kind"] for p in (await client.get("/v1/collection-points/signup/form",
                                                             headers=headers)).json()["purposes"]}
    marketing_grants = sum(1 for e in events if e["action"] == "granted" and kinds[e["purpose"]] == "marketing")
    optional_refusals = sum(1 for e in events if e["action"] == "refused" and kinds[e["purpose"]] == "optional")
    assert marketing_grants == 2 and optional_refusals >= 1
    assert _value("consent_ledger_consent_events_total", action="granted", kind="marketing") == \
        granted_marketing + marketing_grants
    assert _value("consent_ledger_consent_events_total", action="refused", kind="optional") == \
        refused_optional + optional_refusals

    response = await client.post(f"/v1/subjects/{subject}/consents/marketing-sms/withdraw", json={},
                                 headers=headers)
    assert response.status_code == 200, response.text
    assert _value("consent_ledger_consent_events_total", action="withdrawn", kind="marketing") == \
        withdrawn_marketing + 1


async def test_events_of_a_rolled_back_request_are_not_counted(client, auth, demo, db, monkeypatch):
    """The events are appended, then the request fails before its commit: nothing was written, so
    nothing may be counted."""
    before = _value("consent_ledger_consent_events_total", action="granted", kind="required")

    async def fail(*args, **kwargs):
        raise RuntimeError("failed after the events were appended")

    monkeypatch.setattr(idempotency, "store", fail)
    subject = f"m-{uuid.uuid4().hex[:8]}"
    response = await sign_up(client, auth(demo), subject)
    problem(response, 500, "internal-error")
    assert await db.fetchval("SELECT count(*) FROM subjects WHERE tenant_id = $1 AND external_id = $2",
                             demo, subject) == 0
    assert _value("consent_ledger_consent_events_total", action="granted", kind="required") == before


@pytest.mark.parametrize("method", ["FOO", "PROPFIND"])
async def test_unknown_methods_share_one_label(client, method):
    labels = {"route": "/healthz", "method": "OTHER", "status": "405"}
    before = REGISTRY.get_sample_value("consent_ledger_http_requests_total", labels) or 0
    await client.request(method, "/healthz")
    assert _value("consent_ledger_http_requests_total", **labels) == before + 1
    assert REGISTRY.get_sample_value("consent_ledger_http_requests_total",
                                     {"route": "/healthz", "method": method, "status": "405"}) is None
