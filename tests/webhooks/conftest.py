"""Webhook fixtures: a real receiver on 127.0.0.1, an in-process worker, endpoint registration."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from app.core.settings import Settings
from app.webhooks.dispatcher import Worker
from tests.webhooks.receiver import Receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


class RunningWorker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = asyncio.Event()
        self.worker = Worker(settings, name="test-worker")
        self.task = asyncio.create_task(self.worker.run(self.stop))

    async def shutdown(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 10)


@pytest.fixture
async def start_worker(settings: Settings) -> AsyncIterator[Callable[..., RunningWorker]]:
    """start_worker(**setting_overrides) -> a worker running in this event loop, stopped at teardown."""
    running: list[RunningWorker] = []

    def start(**overrides: Any) -> RunningWorker:
        w = RunningWorker(dataclasses.replace(settings, **overrides))
        running.append(w)
        return w

    yield start
    for w in running:
        if not w.task.done():
            await w.shutdown()


@pytest.fixture
async def worker(start_worker) -> RunningWorker:
    return start_worker()


@pytest.fixture(autouse=True)
async def _quiet_endpoints(tenant: str, db) -> AsyncIterator[None]:
    """After each test, switch its endpoints off so later workers do not retry into closed ports."""
    yield
    await db.execute("UPDATE webhook_endpoints SET enabled = false WHERE tenant_id = $1", tenant)


Register = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def register(client: httpx.AsyncClient, auth, tenant: str) -> Register:
    """register(receiver, **fields) -> the created endpoint (with its secret, which the receiver learns)."""

    async def make(rcv: Receiver, **fields: Any) -> dict[str, Any]:
        response = await client.post("/v1/webhook-endpoints", json={"url": rcv.url, **fields},
                                     headers=auth(tenant, "webhooks:admin"))
        assert response.status_code == 201, response.text
        endpoint = response.json()
        rcv.secrets.append(endpoint["secret"])
        return endpoint

    return make
