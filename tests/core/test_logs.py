"""Logs are JSON lines carrying a request id, and never an IP address, a token or a consent body."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
from fastapi import Request

from app.core.logging import JsonFormatter, scrub
from app.main import create_app
from tests.helpers import decisions_for, form

CLIENT_IP = "203.0.113.7"  # the test client's address (tests/conftest.py)


class Captured:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.text.splitlines()]  # every line is one JSON object

    def access(self, request_id: str) -> dict:
        found = [e for e in self.lines() if e["logger"] == "consent_ledger.access" and e.get("request_id") == request_id]
        assert len(found) == 1, self.text
        return found[0]


@pytest.fixture
def logs() -> Iterator[Captured]:
    """The formatter `consent-ledger serve` installs, on the app's loggers, at INFO."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("consent_ledger")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield Captured(stream)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_access_line_per_request_with_the_given_request_id(client, auth, demo, logs):
    headers = {**auth(demo), "X-Request-ID": "order-7f3a.2026:11"}
    response = await client.get("/v1/subjects/someone/consents", headers=headers)
    assert response.status_code == 404
    assert response.headers["x-request-id"] == "order-7f3a.2026:11"
    line = logs.access("order-7f3a.2026:11")
    assert line["message"] == "request" and line["level"] == "INFO"
    assert line["route"] == "/v1/subjects/{subject_id}/consents"  # the template, not the subject's id
    assert line["method"] == "GET" and line["status"] == 404 and line["duration_ms"] >= 0
    assert "someone" not in logs.text


@pytest.mark.parametrize("given", ["has spaces", "x" * 129, "semi;colon", "<script>", "é"])
async def test_an_unsafe_request_id_is_replaced(client, logs, given):
    response = await client.get("/healthz", headers={"X-Request-ID": given.encode()})
    generated = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert logs.access(generated)["route"] == "/healthz"


async def test_a_request_id_is_generated_when_none_is_given(client, logs):
    first = (await client.get("/healthz")).headers["x-request-id"]
    second = (await client.get("/healthz")).headers["x-request-id"]
    assert first != second and re.fullmatch(r"[0-9a-f]{32}", first)


async def test_no_ip_token_or_consent_body_in_the_logs(client, auth, demo, logs):
    headers = {**auth(demo), "User-Agent": "MarkerAgent/9.9 (ua-secret)"}
    body = decisions_for(await form(client, headers), {"marketing"})
    subject = f"marker-subject-{uuid.uuid4().hex[:6]}"
    response = await client.post(f"/v1/subjects/{subject}/consents", json=body, headers=headers)
    assert response.status_code == 201, response.text
    response = await client.post(f"/v1/subjects/{subject}/consents/marketing/withdraw",
                                 json={"reason": "reason-marker-text"}, headers=headers)
    assert response.status_code == 200, response.text
    bad = await client.post(f"/v1/subjects/{subject}/consents", json={**body, "method": "telepathy-marker"},
                            headers=headers)
    assert bad.status_code == 422
    token = headers["Authorization"].split()[1]
    assert len(logs.lines()) >= 4
    for secret in (CLIENT_IP, token, token.split(".")[2], "ua-secret", "reason-marker-text", "telepathy-marker",
                   subject, body["notice_id"]):
        assert secret not in logs.text, secret


async def test_an_unexpected_error_is_logged_without_what_its_message_quoted(settings, auth, demo, logs):
    """Exception messages quote what they were given; the error line is scrubbed of addresses and tokens."""
    application = create_app(settings)

    @application.get("/v1/explode")
    async def explode(request: Request):
        raise RuntimeError(f"failed for {request.client.host} and ::1 and 10.1.2.3:5432 with "
                           f"{request.headers['authorization']} at 12:30:45")

    headers = {**auth(demo), "X-Request-ID": "explode-1"}
    transport = httpx.ASGITransport(app=application, client=(CLIENT_IP, 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        response = await c.get("/v1/explode", headers=headers)
    assert response.status_code == 500
    errors = [e for e in logs.lines() if e["level"] == "ERROR"]
    assert len(errors) == 1 and errors[0]["request_id"] == "explode-1"
    assert "RuntimeError" in errors[0]["error"] and "12:30:45" in errors[0]["error"]
    for secret in (CLIENT_IP, "10.1.2.3", "::1", headers["Authorization"].split()[1]):
        assert secret not in logs.text, secret
    assert logs.access("explode-1")["status"] == 500


def test_scrub_keeps_what_is_not_an_address():
    assert scrub("at 12:30:45 on 2026-11-22, version 1.2.3") == "at 12:30:45 on 2026-11-22, version 1.2.3"
    assert scrub("from 192.168.0.1 and fe80::1%eth0 and 2001:db8::2") == "from [ip] and [ip] and [ip]"
    assert scrub("Authorization: Bearer abc.def") == "Authorization: Bearer [token]"
