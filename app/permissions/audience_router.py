"""POST /v1/permissions/{channel}/check: which of these member ids may get this ad now?"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send
from pydantic import BaseModel, Field

from app.auth.deps import PermissionsRead
from app.core.errors import FieldError, InvalidRequest, ProblemError, problem_responses
from app.core.responses import dumps_bytes, json_response
from app.core.schemas import Key, UtcDatetime
from app.permissions import audience, scope

router = APIRouter(prefix="/v1/permissions", tags=["permissions"], responses=problem_responses(401, 403, 413, 422))
AUDIENCE_PATH = re.compile(audience.PATH_PATTERN)


class Denied(BaseModel):
    reasons: list[str] = Field(description="The codes of the reasons that deny these members (see `reasons`)")
    subject_ids: list[str] = Field(description="The member ids denied for exactly these reasons, in the order given")


class ReasonText(BaseModel):
    article: str
    detail: str = Field(description="An example of the reason as the single check words it")


class AudienceCheck(BaseModel):
    channel: str
    at: datetime
    counts: dict[str, int] = Field(description="checked, allowed, denied")
    allowed: list[str]
    denied: list[Denied] = Field(description="The others, grouped by the reasons that deny them")
    reasons: dict[str, ReasonText]


class AudienceIn(BaseModel):
    subject_ids: list[str] = Field(max_length=audience.MAX_IDS, description="Member ids, at most 100,000")


async def _body(request: Request) -> list[str]:
    if int(request.headers.get("content-length") or 0) > audience.JSON_MAX_BYTES:
        raise InvalidRequest(f"a JSON body is at most {audience.JSON_MAX_BYTES:,} bytes; stream more as NDJSON",
                             errors=[FieldError(field="body", reason="too large for JSON")])
    chunks, size = [], 0
    async for chunk in request.stream():  # a chunked body is cut at the limit, not read whole first
        size += len(chunk)
        if size > audience.JSON_MAX_BYTES:
            raise InvalidRequest(f"a JSON body is at most {audience.JSON_MAX_BYTES:,} bytes; stream more as NDJSON",
                                 errors=[FieldError(field="body", reason="too large for JSON")])
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("the body is not JSON", errors=[FieldError(field="body", reason=str(exc))]) from None
    if not isinstance(body, dict) or set(body) != {"subject_ids"}:
        raise InvalidRequest("the body is {\"subject_ids\": [...]}", errors=[FieldError(
            field="body", reason="an object with exactly the member subject_ids")])
    return audience.check_ids(body["subject_ids"], "body.subject_ids")


@router.post(
    "/{channel}/check", operation_id="permissions-check-audience", response_model=AudienceCheck,
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": AudienceIn.model_json_schema()},
        audience.NDJSON: {"schema": {"type": "string", "description": 'One member id per line: "id" or '
                                                                      '{"subject_id": "id"}; any count'}}}}},
)
async def check_audience(
    request: Request, principal: PermissionsRead,
    channel: Annotated[Literal["sms", "email", "push", "kakao", "phone"], Path(description="The advertising channel")],
    at: Annotated[UtcDatetime | None, Query(description="When the campaign goes out (default: now); an instant "
                                                        "in the past reads the events as of then")] = None,
    category: Annotated[Key | None, Query(description="The goods the ad is for (see the single check)")] = None,
):
    """The single check's rules (`GET /v1/subjects/{id}/permissions/{channel}`) for a whole
    audience: up to 100,000 member ids as JSON, answered with the allowed ones and, for the others,
    the reasons; or any number as NDJSON, streamed in and out (one line per id, then a summary
    line; a malformed line ends the stream with an `error` line). Answered from the ledger's own
    states, in the transaction order of the events: never a cache."""
    await scope.check_channel(request.app.state.pool, principal, channel)
    checker = audience.Checker(request.app.state.pool, principal.tenant, channel, at, category)
    if request.headers.get("content-type", "").split(";")[0].strip() == audience.NDJSON:
        await checker.start()
        return NdjsonAudience(checker)
    ids = await _body(request)
    await checker.start()
    allowed: list[str] = []
    denied: dict[tuple[str, ...], list[str]] = {}
    for subject_id, ok, blocking in await checker.chunk(ids):
        if ok:
            allowed.append(subject_id)
        else:
            denied.setdefault(blocking, []).append(subject_id)
    return json_response({"channel": channel, "at": checker.at, "counts": checker.counts, "allowed": allowed,
                          "denied": [{"reasons": k, "subject_ids": v} for k, v in denied.items()],
                          "reasons": checker.reasons})


class NdjsonAudience(Response):
    """Reads the NDJSON body and writes the answer as it goes, itself: Starlette's StreamingResponse
    would listen for a disconnect on the same `receive` the body comes through."""

    media_type = audience.NDJSON

    def __init__(self, checker: audience.Checker) -> None:
        super().__init__(media_type=audience.NDJSON)
        # no Content-Length (the length is not known yet): the server sends it chunked
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.checker = checker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return

        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async for part in _stream(self.checker, body()):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _stream(checker: audience.Checker, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for ids in audience.ndjson_ids(body):
            lines = []
            for subject_id, ok, blocking in await checker.chunk(ids):
                item = {"subject_id": subject_id, "allowed": ok}
                if not ok:
                    item["reasons"] = blocking
                lines.append(dumps_bytes(item))
            yield b"\n".join(lines) + b"\n"
    except ProblemError as exc:
        yield dumps_bytes({"error": {"detail": exc.detail, "errors": [e.model_dump() if hasattr(e, "model_dump")
                                                                      else dict(e) for e in exc.errors]}}) + b"\n"
        return
    yield dumps_bytes({"summary": {"channel": checker.channel, "at": checker.at, "counts": checker.counts,
                                   "reasons": checker.reasons}}) + b"\n"
