"""Inputs at the edge of what can be represented are a 422 naming the field, never a 500."""

from __future__ import annotations

import base64

import pytest

from tests.core.test_errors import problem
from tests.helpers import decisions_for, form, sign_up

# Valid ISO 8601 instants whose UTC equivalent falls outside year 1-9999.
OUT_OF_RANGE = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]


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
    for value in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"):
        response = await client.get("/v1/subjects/extreme-subject/consents", params={"as_of": value},
                                    headers=headers)
        assert response.status_code == 200, response.text


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
