"""The ASGI edge every request passes: request id, body size limit, metrics, access log, and an
answer for every error.

One pure ASGI middleware rather than several (or BaseHTTPMiddleware): it runs on the hot read path,
so it reads the headers once and does a few dictionary lookups per request.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from time import perf_counter
from urllib.parse import unquote_to_bytes

from fastapi.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import errors, metrics
from app.core.logging import SAFE, request_id

access_log = logging.getLogger("consent_ledger.access")
log = logging.getLogger("consent_ledger")

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a body without Content-Length grows past the limit. FastAPI lets an
    HTTPException from body reading through untouched, so it becomes a problem+json 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class Edge:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int,
                 large_bodies: tuple[re.Pattern[str], int] | None = None) -> None:
        """`large_bodies`: (paths, limit) for the few routes made for big bodies (a campaign's
        audience); every other path gets `max_body_bytes`."""
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.large_bodies = large_bodies
        # Generated request ids: random per process, then a counter (os.urandom per request costs more).
        self.id_prefix = os.urandom(8).hex()
        self.ids = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = perf_counter()
        given_id = length = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given_id = value
            elif name == b"content-length":
                length = value
        if given_id and _REQUEST_ID.fullmatch(given_id):
            rid = given_id.decode()
        else:
            rid = f"{self.id_prefix}{next(self.ids):016x}"
        rid_token = request_id.set(rid)
        rid_header = (b"x-request-id", rid.encode())
        method = scope["method"]
        pending = pending_token = None
        if method not in errors.READ_ONLY:
            pending = []
            pending_token = metrics.pending_consent_events.set(pending)
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        try:
            if bad := _unreadable_text(scope):
                await errors.validation_problem(
                    f"the {bad} is not text the service can keep apart from other text",
                    [errors.FieldError(field=bad, reason="not valid UTF-8 once percent-decoded, or holds NUL")],
                    instance=scope["path"],
                )(scope, receive, send_with_id)
            elif length is not None and _too_long(length, self._limit(scope)):
                await self._too_large(scope, receive, send_with_id)
            else:
                await self.app(scope, receive if length is not None else self._counted(receive, self._limit(scope)),
                               send_with_id)
        except Exception as exc:
            if status:  # the response has started: nothing to do but let the server close the connection
                log.error("error after the response started on %s %s", method, errors.route_template(scope),
                          exc_info=exc)
                raise
            if isinstance(exc, BodyTooLarge):  # read by a route outside FastAPI's body handling
                await self._too_large(scope, receive, send_with_id)
            else:
                await errors.unexpected_response(scope, exc)(scope, receive, send_with_id)
        finally:
            elapsed = perf_counter() - started_at
            route = errors.route_template(scope)
            metrics.HTTP.observe(route, method, status, elapsed)
            if pending and 200 <= status < 300:
                metrics.count_committed(pending)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info("request", extra={SAFE: True, "fields": {
                    "method": method, "route": route, "status": status, "duration_ms": round(elapsed * 1000, 2)}})
            if pending_token is not None:
                metrics.pending_consent_events.reset(pending_token)
            request_id.reset(rid_token)

    def _limit(self, scope: Scope) -> int:
        if self.large_bodies is not None and self.large_bodies[0].fullmatch(scope["path"]):
            return self.large_bodies[1]
        return self.max_body_bytes

    def _counted(self, receive: Receive, limit: int) -> Receive:
        """A chunked body has no length up front: count it as it streams and stop at the limit."""
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return counted

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refused before anything reads the body (the server discards it or closes the connection)."""
        response = errors.problem_response(
            status=413, slug="content-too-large", title="Content too large",
            detail=f"the request body is larger than {self._limit(scope)} bytes", instance=scope["path"],
        )
        await response(scope, receive, send)


def _unreadable_text(scope: Scope) -> str | None:
    """"path" or "query" when its percent-decoded text is not UTF-8 or holds NUL. The server decodes
    the path with replacement characters, so `caf%E9` and `caf%E8` would name one subject; NUL
    cannot be stored. Checked before routing, for every route's parameters at once."""
    path = scope["path"]
    if "\ufffd" in path or "\x00" in path:
        return "path"
    query = scope.get("query_string", b"")
    if b"%" in query:
        try:
            if "\x00" in unquote_to_bytes(query.replace(b"+", b" ")).decode("utf-8"):
                return "query"
        except UnicodeDecodeError:
            return "query"
    return None


def _too_long(length: bytes, limit: int) -> bool:
    try:
        return int(length) > limit
    except ValueError:  # servers refuse a malformed Content-Length before the app sees it
        return True

