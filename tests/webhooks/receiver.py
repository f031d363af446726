"""A real HTTP/1.1 webhook receiver on 127.0.0.1, small enough to control every byte of its answer.

Each request is verified with the public `standardwebhooks` package against the secrets the test
gives it; `respond` decides the answer (status, headers, delay) so tests can make it fail, hang,
ask for Retry-After or answer 410. Also used by bench/webhooks.py as the load receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    received_at: float
    headers: dict[str, str]
    body: bytes
    verified_with: list[str]  # which of the receiver's secrets verified it
    peer: int = 0  # client port: which connection carried the request
    path: str = "/"

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: bytes = b"ok"


class Receiver:
    def __init__(self, respond: Callable[[Received], Answer] | None = None, *, verify: bool = True) -> None:
        self.respond = respond or (lambda _: Answer())
        self.secrets: list[str] = []
        self.verify = verify
        self.received: list[Received] = []
        self.unverified: list[Received] = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.arrived = asyncio.Event()
        self._closing = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def start(self, port: int = 0) -> "Receiver":
        self._closing = asyncio.Event()
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self._closing.set()  # held (hanging) answers end with their connections
            if hasattr(self.server, "close_clients"):
                self.server.close_clients()
            await self.server.wait_closed()
            self.server = None

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until `count` verified requests arrived (or fail the test with what did arrive)."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"expected {count} deliveries, got {len(self.received)} "
                                     f"(+{len(self.unverified)} unverified) in {timeout}s")
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except TimeoutError:
                pass
        return self.received

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1] if lines[0].count(" ") >= 2 else "/"
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                item = Received(time.time(), headers, body, [], writer.get_extra_info("peername")[1], path)
                if self.verify:
                    for secret in self.secrets:
                        try:
                            Webhook(secret).verify(body, headers)
                            item.verified_with.append(secret)
                        except WebhookVerificationError:
                            pass
                answer = self.respond(item)
                if answer.delay:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closing.wait(), answer.delay)
                    if self._closing.is_set():
                        break
                (self.received if item.verified_with or not self.verify else self.unverified).append(item)
                self.arrived.set()
                extra = "".join(f"{k}: {v}\r\n" for k, v in answer.headers.items())
                writer.write(f"HTTP/1.1 {answer.status} X\r\ncontent-length: {len(answer.body)}\r\n{extra}\r\n"
                             .encode() + answer.body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
