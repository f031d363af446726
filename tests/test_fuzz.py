"""No input gets a 5xx: schemathesis generates valid and invalid requests for every operation in the
OpenAPI document and sends them in-process (ASGI) with a valid token of a tenant with the demo catalog.

Bounded: MAX_EXAMPLES per operation keeps the whole module well under a minute. A failure prints
the request (as a curl command) and hypothesis's seed to reproduce it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis.python import asgi

from app.auth.tokens import issue
from app.core.db import create_engine, session_factory
from app.demo.loader import load_tenant
from app.demo.tenants import SMALLTICKET
from app.main import create_app
from app.openapi import OPENAPI_SETTINGS
from tests.conftest import ALL_SCOPES

MAX_EXAMPLES = 12

# Instants anywhere Python can write them, with any offset, a third of them within a day of either end:
# an offset at year 1 or 9999 leaves the range once converted to UTC (500s the default strategy missed).
_OFFSETS = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda minutes: timezone(timedelta(minutes=minutes)))


def _instants(low: datetime, high: datetime) -> st.SearchStrategy[str]:
    return st.datetimes(min_value=low, max_value=high, timezones=_OFFSETS).map(datetime.isoformat)


schemathesis.openapi.format("date-time", st.one_of(
    _instants(datetime.min, datetime.min + timedelta(days=1)),
    _instants(datetime.max - timedelta(days=1), datetime.max),
    _instants(datetime.min, datetime.max),
))

SCHEMA = schemathesis.openapi.from_dict(create_app(OPENAPI_SETTINGS).openapi())


def _in_a_thread(coroutine) -> object:
    """Its own event loop in its own thread: this module's tests are synchronous (schemathesis runs
    the app on a loop of its own), and the suite's session loop must stay untouched."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@pytest.fixture(scope="module")
def fuzz_tenant(settings) -> str:
    key = f"fuzz-{uuid.uuid4().hex[:10]}"

    async def load() -> None:
        engine = create_engine(settings.database_url, settings)
        try:
            async with session_factory(engine)() as session, session.begin():
                await load_tenant(session, {**SMALLTICKET, "tenant": {**SMALLTICKET["tenant"], "id": key}})
        finally:
            await engine.dispose()

    _in_a_thread(load())
    return key


@pytest.fixture(scope="module")
def fuzz_app(settings, fuzz_tenant):
    application = create_app(settings)
    yield application
    asgi.shutdown_lifespans()  # schemathesis started it at the first request


@pytest.fixture(scope="module")
def fuzz_headers(settings, fuzz_tenant) -> dict[str, str]:
    token = issue(settings, tenant=fuzz_tenant, sub="fuzzer", scopes=[*ALL_SCOPES, "evidence:forward", "self"])
    return {"Authorization": f"Bearer {token}"}


@SCHEMA.parametrize()
@hypothesis_settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                     suppress_health_check=list(HealthCheck))
def test_no_input_gets_a_5xx(case, fuzz_app, fuzz_headers):
    response = case.call(app=fuzz_app, headers=fuzz_headers)
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}\n"
        f"{case.as_curl_command(headers=fuzz_headers)}")
