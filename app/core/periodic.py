"""A worker's background job: a round on a connection of its own every so often, until stopped.

An outage or a failed round is logged and the next round tried on schedule; the loop outlives it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from app.core.db import asyncpg_dsn
from app.core.settings import Settings


async def every(settings: Settings, stop: asyncio.Event, interval: float, *, name: str,
                job: Callable[[asyncpg.Connection], Awaitable[Any]], log: logging.Logger, what: str) -> None:
    """Run `job(conn)` every `interval` seconds until `stop` (application_name `name`); `what` says,
    in the warning of a failed round, what was not done."""
    while not stop.is_set():
        try:
            conn = await asyncpg.connect(asyncpg_dsn(settings.database_url),
                                         timeout=settings.db_connect_timeout_seconds,
                                         server_settings={"application_name": name, "timezone": "UTC"})
            try:
                await job(conn)
            finally:
                await conn.close()
        except Exception as exc:  # noqa: BLE001 - the loop must outlive outages
            log.warning("%s not done this round: %s: %s", what, type(exc).__name__, exc)
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass
