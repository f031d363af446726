"""Sending one delivery: resolve and check the URL, sign, POST, read a bounded answer.

Every outcome is a `Result`, never an exception: whatever a receiver does (hang, refuse, redirect,
answer garbage) is a failed attempt for the recorder to log and retry.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import httpx

from app.core.settings import Settings
from app.webhooks import signing, ssrf
from app.webhooks.dns import LookupTimeout, Resolver

log = logging.getLogger("consent_ledger.webhooks")

RESPONSE_BODY_LIMIT = 1024
MAX_TRANSPORTS = 256  # endpoints with an open connection pool per worker
USER_AGENT = "consent-ledger-webhooks/0.1"
STATIC_HEADERS = {"user-agent": USER_AGENT, "content-type": "application/json"}


@dataclass
class Result:
    attempted_at: datetime
    status_code: int | None = None
    latency_ms: float | None = None
    response_body: str | None = None
    error: str | None = None
    retry_after: float | None = None
    outcome: str = "error"  # delivered, http_error, timeout, refused (SSRF guard), error (network and the rest)

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


class Sender:
    def __init__(self, settings: Settings) -> None:
        self.settings = s = settings
        self.resolver = Resolver(threads=s.webhook_dns_threads, ttl=s.webhook_dns_cache_seconds,
                                 timeout=s.webhook_connect_timeout_seconds)
        # One connection pool per endpoint, sized by the per-endpoint in-flight cap: a hanging
        # endpoint can fill its own pool but never another endpoint's, even on the same host:port.
        # Keyed by the origin too: the URL sent is rewritten to the IP the SSRF guard checked and
        # httpx pools by that IP, so a pool must never carry a TLS connection verified for one
        # hostname to another hostname.
        self.transports: OrderedDict[tuple[uuid.UUID, str, str], httpx.AsyncHTTPTransport] = OrderedDict()
        self._timeouts = {"connect": s.webhook_connect_timeout_seconds, "read": s.webhook_timeout_seconds,
                          "write": s.webhook_timeout_seconds, "pool": s.webhook_timeout_seconds}

    async def send(self, delivery: asyncpg.Record) -> Result:
        body = delivery["body"].encode()
        secrets_in_use = [delivery["secret"]] + ([delivery["previous_secret"]] if delivery["previous_secret"] else [])
        started_wall = time.time()
        result = Result(attempted_at=datetime.fromtimestamp(started_wall, UTC))
        started = time.perf_counter()
        timeout = self.settings.webhook_timeout_seconds
        try:
            async with asyncio.timeout(timeout):  # DNS, connect, send, answer
                target = await ssrf.resolve(delivery["url"], self.settings.webhook_allowed_hosts,
                                            self.resolver.getaddrinfo)
                headers = signing.headers(secrets_in_use, str(delivery["message_id"]), int(started_wall), body)
                headers.update(STATIC_HEADERS)
                headers["host"] = target.host_header
                extensions: dict = {"timeout": self._timeouts}
                if target.sni_hostname:
                    extensions["sni_hostname"] = target.sni_hostname
                scheme = target.url.split(":", 1)[0]
                request = httpx.Request("POST", target.url, headers=headers, content=body, extensions=extensions)
                transport = self._transport(delivery["endpoint_id"], scheme, target.host_header)
                response = await transport.handle_async_request(request)
                try:  # a transport never follows redirects: a 3xx is an answer like any other
                    result.status_code = response.status_code
                    result.retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
                    result.response_body = await _read_limited(response)
                finally:
                    await response.aclose()
            result.outcome = "delivered" if result.ok else "http_error"
        except ssrf.UnsafeURL as exc:
            result.error, result.outcome = f"refused by the SSRF guard: {exc.reason}", "refused"
        except LookupTimeout as exc:
            result.error, result.outcome = str(exc), "timeout"
        except (TimeoutError, httpx.TimeoutException):
            result.error, result.outcome = f"timed out after {timeout:g}s", "timeout"
        except httpx.HTTPError as exc:
            result.error = f"{type(exc).__name__}: {exc}"[:500]
        except Exception as exc:  # noqa: BLE001 - whatever the receiver sends back is a failed attempt, never a crash
            log.warning("webhook worker: unexpected error sending %s", delivery["id"], exc_info=True)
            result.error = f"{type(exc).__name__}: {exc}"[:500]
        if result.response_body:
            result.response_body = result.response_body.replace("\x00", "")  # PostgreSQL text refuses NUL
        if result.error:
            result.error = result.error.replace("\x00", "")
        result.latency_ms = round((time.perf_counter() - started) * 1000, 2)
        return result

    def _transport(self, endpoint_id: uuid.UUID, scheme: str, origin: str) -> httpx.AsyncHTTPTransport:
        """httpx's transport is used without the Client around it (no cookies, auth, redirects or URL
        merging to run): measured 15-20 % less CPU per send, and the worker's CPU is its limit
        (bench/README.md)."""
        key = (endpoint_id, scheme, origin)
        transport = self.transports.get(key)
        if transport is None:
            cap = self.settings.webhook_max_in_flight_per_endpoint
            transport = httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=cap, max_keepalive_connections=cap))
            self.transports[key] = transport
            if len(self.transports) > MAX_TRANSPORTS:  # close the least recently used once its sends are over
                _, oldest = self.transports.popitem(last=False)
                asyncio.get_running_loop().call_later(
                    self.settings.webhook_timeout_seconds + 1, lambda t=oldest: asyncio.ensure_future(t.aclose()))
        self.transports.move_to_end(key)
        return transport

    async def close(self) -> None:
        for transport in self.transports.values():
            await transport.aclose()
        self.transports.clear()
        self.resolver.close()


async def _read_limited(response: httpx.Response) -> str:
    """At most RESPONSE_BODY_LIMIT bytes of the response, for the attempt log."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= RESPONSE_BODY_LIMIT:
            break
    return b"".join(chunks)[:RESPONSE_BODY_LIMIT].decode("utf-8", "replace")
