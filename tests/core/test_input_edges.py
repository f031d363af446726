"""Inputs at the edge of what can be represented are a 422 naming the field, never a 500."""

from __future__ import annotations

import base64

import pytest

from tests.core.test_errors import problem
from tests.helpers import decisions_for, form, sign_up

# Valid ISO 8601 instants whose UTC equivalent falls outside year 1-9999.
# And those within a day of either end: shown in Korean time, or a day added, they would leave it too.
OUT_OF_RANGE = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T23:59:59Z",
                "9999-12-31T15:00:00Z"]


def _fields(body: dict) -> list[str]:
    return [e["field"] for e in body["errors"]]


@pytest.mark.parametrize("value", OUT_OF_RANGE)
async def test_as_of_outside_the_range_is_422(client, auth, demo, value):
    headers = auth(demo)
    assert (await sign_up(client, headers, "range-subject")).status_code == 201
    response = await client.get("/v1/subjects/range-subject/consents", params={"as_of": value}, headers=headers)
    assert _fields(problem(response, 422, "validation-error")) == ["query.as_of"]


async def test_as_of_at_the_extremes_in_utc_still_answers(client, auth, demo):
    headers = auth(demo)
    assert (await sign_up(client, headers, "extreme-subject")).status_code == 201
    for value in ("0001-01-02T00:00:00Z", "9999-12-30T00:00:00Z"):
        response = await client.get("/v1/subjects/extreme-subject/consents", params={"as_of": value},
                                    headers=headers)
        assert response.status_code == 200, response.text
        permission = await client.get("/v1/subjects/extreme-subject/permissions/sms", params={"at": value},
                                      headers=headers)
        assert permission.status_code == 200, permission.text  # the night rule reads it in Korean time


@pytest.mark.parametrize("value", [*OUT_OF_RANGE, "1999-12-31T23:59:59Z", "1970-01-01T00:00:00Z"])
async def test_occurred_at_outside_the_range_is_422(client, auth, demo, value):
    headers = auth(demo)
    body = decisions_for(await form(client, headers)) | {"occurred_at": value}
    response = await client.post("/v1/subjects/occurred-subject/consents", json=body, headers=headers)
    assert _fields(problem(response, 422, "validation-error")) == ["body.occurred_at"]


async def test_occurred_at_of_this_century_is_accepted(client, auth, demo):
    headers = auth(demo)
    body = decisions_for(await form(client, headers)) | {"occurred_at": "2000-01-01T09:00:00+09:00"}
    response = await client.post("/v1/subjects/century-subject/consents", json=body, headers=headers)
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("value", OUT_OF_RANGE)
async def test_withdrawal_occurred_at_outside_the_range_is_422(client, auth, demo, value):
    headers = auth(demo)
    assert (await sign_up(client, headers, "w-subject", {"marketing"})).status_code == 201
    response = await client.post("/v1/subjects/w-subject/consents/marketing/withdraw",
                                 json={"occurred_at": value}, headers=headers)
    assert _fields(problem(response, 422, "validation-error")) == ["body.occurred_at"]


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("raw", ["seq:9223372036854775808", "seq:" + "9" * 40, "seq:-1", "seq:1|seq:2"])
async def test_forged_history_cursor_is_422(client, auth, demo, raw):
    headers = auth(demo)
    assert (await sign_up(client, headers, "cursor-range")).status_code == 201
    response = await client.get("/v1/subjects/cursor-range/consents/history", params={"cursor": _cursor(raw)},
                                headers=headers)
    assert _fields(problem(response, 422, "invalid-request")) == ["query.cursor"]


@pytest.fixture
async def endpoint(client, auth, tenant) -> str:
    response = await client.post("/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/hooks"},
                                 headers=auth(tenant, "webhooks:admin"))
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.mark.parametrize("name", ["since", "until"])
@pytest.mark.parametrize("value", OUT_OF_RANGE)
async def test_delivery_log_time_filters_outside_the_range_are_422(client, auth, tenant, endpoint, name, value):
    response = await client.get(f"/v1/webhook-endpoints/{endpoint}/deliveries", params={name: value},
                                headers=auth(tenant, "webhooks:admin"))
    assert _fields(problem(response, 422, "validation-error")) == [f"query.{name}"]


@pytest.mark.parametrize("value", OUT_OF_RANGE)
async def test_recover_since_outside_the_range_is_422(client, auth, tenant, endpoint, value):
    response = await client.post(f"/v1/webhook-endpoints/{endpoint}/recover", json={"since": value},
                                 headers=auth(tenant, "webhooks:admin"))
    assert _fields(problem(response, 422, "validation-error")) == ["body.since"]


@pytest.mark.parametrize("raw", [
    "0001-01-01T00:00:00+01:00|00000000-0000-0000-0000-000000000001",
    "9999-12-31T23:59:59-01:00|00000000-0000-0000-0000-000000000001",
    "2026-01-01T00:00:00|00000000-0000-0000-0000-000000000001",  # no offset: never guessed
    "2026-01-01T00:00:00Z|not-a-uuid",
])
async def test_forged_delivery_log_cursor_is_422(client, auth, tenant, endpoint, raw):
    response = await client.get(f"/v1/webhook-endpoints/{endpoint}/deliveries", params={"cursor": _cursor(raw)},
                                headers=auth(tenant, "webhooks:admin"))
    assert _fields(problem(response, 422, "invalid-request")) == ["query.cursor"]


async def test_path_ids_that_are_not_utf8_are_422_never_another_subjects(client, auth, demo, db):
    """The server decodes a path with replacement characters: caf%E9 and caf%E8 would be one subject."""
    headers = auth(demo)
    body = decisions_for(await form(client, headers), {"marketing-sms"})
    for path in ("/v1/subjects/caf%E9/consents", "/v1/subjects/caf%EF%BF%BD/consents", "/v1/subjects/a%00b/consents"):
        response = await client.post(path, json=body, headers=headers)
        assert _fields(problem(response, 422, "validation-error")) == ["path"], path
        response = await client.get(path, headers=headers)
        assert _fields(problem(response, 422, "validation-error")) == ["path"], path
    assert await db.fetchval("SELECT count(*) FROM subjects WHERE tenant_id = $1", demo) == 0
    assert (await client.post("/v1/subjects/caf%C3%A9/consents", json=body, headers=headers)).status_code == 201


@pytest.mark.parametrize("query", ["purpose=%E9", "purpose=a%00b", "cursor=%FF%FE"])
async def test_query_text_that_is_not_utf8_or_holds_nul_is_422(client, auth, demo, query):
    headers = auth(demo)
    assert (await sign_up(client, headers, "query-subject")).status_code == 201
    response = await client.get(f"/v1/subjects/query-subject/consents/history?{query}", headers=headers)
    assert _fields(problem(response, 422, "validation-error")) == ["query"]


async def test_nul_in_a_body_text_names_the_body(client, auth, demo):
    response = await client.post("/v1/processors", headers=auth(demo), json={
        "key": "nul-proc", "name": "a\u0000b", "service": "sms"})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"].startswith("body")


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"a": ' + b"1" * 5000 + b"}"],
                         ids=["nested-100000", "5000-digit-number"])
async def test_json_the_parser_gives_up_on_is_422_on_body(client, auth, demo, raw):
    response = await client.post("/v1/processors", headers={**auth(demo), "content-type": "application/json"},
                                 content=raw)
    assert _fields(problem(response, 422, "validation-error")) == ["body"]


@pytest.mark.parametrize("value", ["-1", "0", "1700000000", "1.5e9"])
async def test_a_bare_number_is_not_an_instant(client, auth, demo, value):
    """Read as Unix time it would be 1969 or 2023 without an offset anyone wrote: 422, as any naive time."""
    headers = auth(demo)
    assert (await sign_up(client, headers, "number-subject")).status_code == 201
    response = await client.get("/v1/subjects/number-subject/consents", params={"as_of": value}, headers=headers)
    assert _fields(problem(response, 422, "validation-error")) == ["query.as_of"]
    body = decisions_for(await form(client, headers)) | {"occurred_at": 1_800_000_000}
    response = await client.post("/v1/subjects/number-subject-2/consents", json=body, headers=headers)
    assert _fields(problem(response, 422, "validation-error")) == ["body.occurred_at"]
