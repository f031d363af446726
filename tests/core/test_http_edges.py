"""HTTP edges: body size limit, Allow on 405, undecodable bodies, and what OpenAPI says about them."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from app.main import create_app
from tests.core.test_errors import problem

LIMIT = 1024 * 1024  # the default MAX_REQUEST_BODY_BYTES


def _purpose(padding: int = 0) -> dict:
    return {"key": "padded", "kind": "optional", "disclosures": {"ko": {
        "purpose": "p" + "x" * padding, "items": ["i"], "retention": "r", "refusal_right": "rr",
        "refusal_consequence": "rc"}}}


async def test_default_limit_is_one_mebibyte(settings):
    assert settings.max_request_body_bytes == LIMIT


async def test_body_over_the_limit_with_content_length_is_413_before_parsing(client, auth, tenant, db):
    body = json.dumps(_purpose(LIMIT)).encode()
    assert len(body) > LIMIT
    response = await client.post("/v1/purposes", content=body,
                                 headers={**auth(tenant), "content-type": "application/json"})
    body = problem(response, 413, "content-too-large")
    assert str(LIMIT) in body["detail"]
    assert await db.fetchval("SELECT count(*) FROM purposes WHERE tenant_id = $1", tenant) == 0


async def test_body_just_under_the_limit_is_parsed(client, auth, tenant):
    body = json.dumps(_purpose(LIMIT - 400)).encode()
    assert len(body) <= LIMIT
    response = await client.post("/v1/purposes", content=body,
                                 headers={**auth(tenant), "content-type": "application/json"})
    # parsed: the answer is about a field inside the body (a text past its 2,000 characters), not its size
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"].startswith("body.disclosures"), response.text


async def test_chunked_body_over_the_limit_is_413_and_is_not_read_to_the_end(client, auth, tenant):
    chunk = b" " * 65536
    sent = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(10 * LIMIT // len(chunk)):  # 10 MiB of whitespace, never a complete document
            sent += len(chunk)
            yield chunk

    response = await client.post("/v1/purposes", content=stream(),
                                 headers={**auth(tenant), "content-type": "application/json"})
    assert "content-length" not in response.request.headers
    problem(response, 413, "content-too-large")
    assert sent <= LIMIT + 2 * len(chunk), f"the app read {sent} bytes past a {LIMIT}-byte limit"


async def test_limit_is_a_setting(settings, auth, tenant):
    small = create_app(dataclasses.replace(settings, max_request_body_bytes=100))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=small), base_url="http://testserver") as c:
        response = await c.post("/v1/purposes", json=_purpose(200), headers=auth(tenant))
    problem(response, 413, "content-too-large")


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("DELETE", "/v1/purposes", {"GET", "POST"}),
    ("PUT", "/v1/recipients/insurers", {"GET", "PATCH", "DELETE"}),
    ("DELETE", "/v1/webhook-endpoints", {"GET", "POST"}),
    ("PUT", "/v1/subjects/m-1/consents", {"GET", "POST"}),
])
async def test_405_allow_lists_every_method_of_the_path(client, auth, tenant, method, path, allowed):
    """Starlette answers with the first matching route's methods only; a path served by several
    routes (list and create) must list them all."""
    response = await client.request(method, path, headers=auth(tenant))
    problem(response, 405, "method-not-allowed")
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed


@pytest.mark.parametrize("content", [b'{"key": "\xff\xfe"}', b"\xff", b'{"key": "\xc3"}'])
async def test_undecodable_json_body_is_422_problem_on_body(client, auth, tenant, content):
    response = await client.post("/v1/purposes", content=content,
                                 headers={**auth(tenant), "content-type": "application/json"})
    body = problem(response, 422, "validation-error")
    assert [e["field"] for e in body["errors"]] == ["body"]


def test_openapi_documents_edge_answers(app):
    """413 and 422 wherever a body is accepted, 503 (with Retry-After) on every operation but the health
    checks; all problem+json."""
    spec = app.openapi()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            expected = set() if "health" in operation.get("tags", ()) else {"503"}
            if "requestBody" in operation:
                expected |= {"413", "422"}
            for status in expected:
                assert status in responses, f"{method.upper()} {path} does not document {status}"
                assert "application/problem+json" in responses[status]["content"], (method, path, status)
            if "503" in expected:
                assert "Retry-After" in responses["503"].get("headers", {}), (method, path)
