"""Framework-level errors come out as the same RFC 9457 problem+json as the API's own."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

PREFIX = "urn:consent-ledger:problem:"


def problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == PREFIX + slug
    assert body["status"] == status
    assert body["title"] and body["detail"]
    assert body["instance"] == response.request.url.path
    return body


@pytest.mark.parametrize("path", ["/nope", "/v1/nothing-here", "/v1/subjects/x/consents/y/z/w"])
async def test_unknown_route_is_404_problem(client, path):
    body = problem(await client.get(path), 404, "not-found")
    assert body["type"].endswith("not-found")
    assert path in body["detail"]


async def test_unknown_route_with_token_is_404_problem(client, auth, tenant):
    problem(await client.post("/v1/does-not-exist", headers=auth(tenant), json={}), 404, "not-found")


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("DELETE", "/v1/purposes", {"GET", "POST"}),
    ("PUT", "/v1/recipients/insurers", {"GET", "PATCH", "DELETE"}),
    ("GET", "/v1/subjects/m-1/consents/withdraw", {"POST"}),
    ("POST", "/healthz", {"GET"}),
])
async def test_wrong_method_is_405_problem(client, auth, tenant, method, path, allowed):
    response = await client.request(method, path, headers=auth(tenant))
    body = problem(response, 405, "method-not-allowed")
    assert method in body["detail"]
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed


async def test_malformed_json_is_422_problem_with_errors(client, auth, tenant):
    response = await client.post("/v1/purposes", headers={**auth(tenant), "content-type": "application/json"},
                                 content=b'{"key": "x", "kind": ')
    body = problem(response, 422, "validation-error")
    assert body["errors"], body
    assert all(e["field"].startswith("body") and e["reason"] for e in body["errors"])


async def test_non_object_json_body_is_422_problem(client, auth, tenant):
    response = await client.post("/v1/recipients", headers=auth(tenant), json=["not", "an", "object"])
    body = problem(response, 422, "validation-error")
    assert body["errors"][0]["field"].startswith("body")


async def test_missing_body_is_422_problem(client, auth, tenant):
    body = problem(await client.post("/v1/recipients", headers=auth(tenant)), 422, "validation-error")
    assert [e["field"] for e in body["errors"]] == ["body"]


@pytest.mark.parametrize("limit", ["0", "-1", "501", "ten"])
async def test_invalid_history_limit_is_422_with_field(client, auth, tenant, limit):
    response = await client.get("/v1/subjects/anyone/consents/history", params={"limit": limit},
                                headers=auth(tenant))
    body = problem(response, 422, "validation-error")
    assert [e["field"] for e in body["errors"]] == ["query.limit"]
    assert body["errors"][0]["reason"]


async def test_history_limit_bounds_are_inclusive(client, auth, tenant):
    for limit in ("1", "500"):
        response = await client.get("/v1/subjects/anyone/consents/history", params={"limit": limit},
                                    headers=auth(tenant))
        problem(response, 404, "not-found")  # valid query; the subject just does not exist


async def test_invalid_cursor_is_422_with_field(client, auth, demo):
    from tests.helpers import sign_up

    headers = auth(demo)
    assert (await sign_up(client, headers, "cursor-subject")).status_code == 201
    response = await client.get("/v1/subjects/cursor-subject/consents/history", params={"cursor": "!!garbage!!"},
                                headers=headers)
    body = problem(response, 422, "invalid-request")
    assert [e["field"] for e in body["errors"]] == ["query.cursor"]


async def test_as_of_without_offset_is_422_with_field(client, auth, tenant):
    response = await client.get("/v1/subjects/anyone/consents", params={"as_of": "2026-01-01T00:00:00"},
                                headers=auth(tenant))
    body = problem(response, 422, "validation-error")
    assert [e["field"] for e in body["errors"]] == ["query.as_of"]


async def test_unparseable_as_of_is_422_with_field(client, auth, tenant):
    response = await client.get("/v1/subjects/anyone/consents", params={"as_of": "yesterday"}, headers=auth(tenant))
    body = problem(response, 422, "validation-error")
    assert [e["field"] for e in body["errors"]] == ["query.as_of"]


async def test_nested_body_error_field_path_is_dotted(client, auth, tenant):
    body = {"key": "p", "kind": "optional", "disclosures": {"ko": {
        "purpose": "p", "items": ["", "ok"], "retention": "r", "refusal_right": "rr", "refusal_consequence": "rc"}}}
    response = await client.post("/v1/purposes", headers=auth(tenant), json=body)
    problem_body = problem(response, 422, "validation-error")
    assert [e["field"] for e in problem_body["errors"]] == ["body.disclosures.ko.items.0"]


async def test_problem_documents_are_in_the_openapi_spec(app):
    spec = app.openapi()
    operation = spec["paths"]["/v1/purposes"]["post"]
    for status in ("401", "403", "409", "422"):
        assert "application/problem+json" in operation["responses"][status]["content"], status
