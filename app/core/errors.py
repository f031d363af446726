"""RFC 9457 problem details: one exception family, one set of handlers, one media type."""

from __future__ import annotations

import logging
import socket
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import Scope

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:consent-ledger:problem:"
logger = logging.getLogger("consent_ledger")


class FieldError(BaseModel):
    field: str
    reason: str


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = None


class ProblemError(Exception):
    """Base for every error the API reports; subclasses fix status, slug and title."""

    status: int = 400
    slug: str = "bad-request"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldError] | list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = [e if isinstance(e, FieldError) else FieldError(**e) for e in errors or []]
        self.headers = headers
        self.extra = extra or {}


class InvalidRequest(ProblemError):
    status, slug, title = 422, "invalid-request", "The request is not valid"


class ConsentRuleViolation(ProblemError):
    """A request that is well-formed but breaks a consent invariant (pre-checked, missing ...)."""

    status, slug, title = 422, "consent-rule-violation", "The consent request breaks a consent rule"


class RequiredConsentRefused(ProblemError):
    status, slug, title = 422, "required-consent-refused", "A required purpose was not granted"


class NotFound(ProblemError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(ProblemError):
    status, slug, title = 409, "conflict", "Conflict with the current state"


class IdempotencyKeyReused(ProblemError):
    status, slug, title = 422, "idempotency-key-reused", "Idempotency-Key reused with a different request"


class IdempotencyInProgress(ProblemError):
    status, slug, title = 409, "idempotency-in-progress", "A request with this Idempotency-Key is in progress"


class Busy(ProblemError):
    """A bounded resource is taken (say, the audit bundles being written): try again later."""

    status, slug, title = 429, "busy", "Too many requests of this kind at once"


class Unauthorized(ProblemError):
    status, slug, title = 401, "unauthorized", "Authentication required"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class Forbidden(ProblemError):
    status, slug, title = 403, "forbidden", "Not allowed"


def problem_response(
    *,
    status: int,
    slug: str,
    title: str,
    detail: str,
    request: Request | None = None,
    instance: str | None = None,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path if request is not None else instance,
    }
    if errors:
        body["errors"] = [e.model_dump() for e in errors]
    body.update(extra or {})
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        source, rest = parts[0], parts[1:]
        return f"{source}." + ".".join(rest) if rest else source
    return ".".join(parts)


_HTTP_TITLES = {
    400: ("bad-request", "Bad request"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    413: ("content-too-large", "Content too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
}


def install(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            status=exc.status, slug=exc.slug, title=exc.title, detail=exc.detail, request=request,
            errors=exc.errors or None, headers=exc.headers, extra=exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            FieldError(field=_field_path(tuple(err.get("loc", ()))), reason=err.get("msg", "invalid"))
            for err in exc.errors()
        ]
        return validation_problem(f"{len(errors)} field(s) failed validation; see errors[].", errors,
                                  instance=request.url.path)

    allowed = _AllowedMethods(app)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.__cause__ is not None:  # a body FastAPI could not read as JSON
            # the same answer as malformed JSON, which FastAPI makes a 422
            detail, reason = (("the body is not JSON text in UTF-8", "not valid UTF-8")
                              if isinstance(exc.__cause__, UnicodeDecodeError) else
                              ("the body could not be parsed as JSON",
                               "nested too deeply or holds a number too long to read"))
            return validation_problem(detail, [FieldError(field="body", reason=reason)], instance=request.url.path)
        slug, title = _HTTP_TITLES.get(exc.status_code, ("http-error", "HTTP error"))
        detail = exc.detail if isinstance(exc.detail, str) else title
        headers = getattr(exc, "headers", None)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"No route matches {request.method} {request.url.path}."
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}."
            headers = {**(headers or {}), "Allow": ", ".join(allowed(request.url.path))}
        return problem_response(
            status=exc.status_code, slug=slug, title=title, detail=detail, request=request, headers=headers,
        )

    async def _database(request: Request, exc: Exception) -> JSONResponse:
        if _sqlstate(exc) in _BAD_TEXT:  # e.g. a NUL character, which PostgreSQL text cannot hold
            return problem_response(
                status=422, slug="invalid-text", title="The request is not valid",
                detail="a text value contains a character PostgreSQL cannot store (such as NUL, \\u0000); "
                       "nothing was written", request=request,
                errors=[FieldError(field="body" if request.method in ("POST", "PUT", "PATCH") else "query",
                                   reason="contains a character that cannot be stored, such as NUL")],
            )
        return unexpected_response(request.scope, exc)

    for database_error in (asyncpg.PostgresError, DBAPIError):
        app.add_exception_handler(database_error, _database)
    # Anything else reaches app.core.http.Edge, which answers instead of re-raising: Starlette's own
    # catch-all answers and then re-raises, and uvicorn drops the keep-alive connection on that.


RETRY_AFTER_SECONDS = 2
# admin_shutdown, crash_shutdown, cannot_connect_now, database_dropped, idle_session_timeout,
# too_many_connections, then the timeouts of
# app/core/db.py; class 08 is checked apart.
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "57P04", "57P05", "53300",
                                    "55P03", "57014"})  # lock_not_available, query_canceled (timeouts)
_UNAVAILABLE_DETAIL = {
    True: "The database is not reachable or too busy at the moment. Retry later.",
    # The connection can drop while COMMIT is on its way: then the write may have been recorded.
    False: "The database is not reachable or too busy at the moment. If it went away while this request was "
           "committing, the request may have been recorded: retry with the same Idempotency-Key, which returns "
           "the first result if there was one and records it otherwise.",
}
_UNAVAILABLE_TYPES = (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError, ConnectionError,
                      TimeoutError, socket.gaierror, PoolTimeout)


def database_unavailable(exc: BaseException | None) -> bool:
    """Whether `exc` (or what it wraps) says the database cannot be reached or is going away, as
    opposed to a bug: while PostgreSQL stops or restarts, asyncpg and SQLAlchemy raise any of these."""
    for _ in range(8):
        if exc is None:
            return False
        if isinstance(exc, _UNAVAILABLE_TYPES) or type(exc) is OSError:  # "Multiple exceptions: ... refused"
            return True
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        code = getattr(exc, "sqlstate", None)
        if isinstance(code, str) and (code.startswith("08") or code in _UNAVAILABLE_SQLSTATES):
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
    return False


READ_ONLY = frozenset({"GET", "HEAD", "OPTIONS"})


def route_template(scope: Scope) -> str | None:
    """The matched route's path template (`/v1/subjects/{subject_id}/consents`), never the raw path."""
    return getattr(scope.get("route"), "path", None)


def validation_problem(detail: str, errors: list[FieldError], *, instance: str) -> JSONResponse:
    return problem_response(status=422, slug="validation-error", title="The request failed validation",
                            detail=detail, instance=instance, errors=errors)


def unexpected_response(scope: Scope, exc: BaseException) -> JSONResponse:
    """503 with Retry-After when the database is away, else 500; either way nothing was committed,
    since the unit of work commits before the response is built."""
    path = scope.get("path", "")
    route = route_template(scope)
    if database_unavailable(exc):
        logger.warning("database unavailable on %s %s: %s", scope.get("method"), route, type(exc).__name__)
        return problem_response(
            status=503, slug="database-unavailable", title="Service unavailable",
            detail=_UNAVAILABLE_DETAIL[scope.get("method") in READ_ONLY],
            instance=path, headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    logger.error("unhandled error on %s %s", scope.get("method"), route, exc_info=exc)
    return problem_response(
        status=500, slug="internal-error", title="Internal server error",
        detail="The server failed to handle the request; nothing was written.", instance=path,
    )


class _AllowedMethods:
    """Every method some route serves on a path. Starlette's 405 lists only the first matching
    route's methods, and a collection path has one route per method (list, create)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.table: list[tuple[Any, frozenset[str]]] | None = None

    def __call__(self, path: str) -> list[str]:
        if self.table is None:  # built at the first 405, when every router has been included
            self.table = [(compile_path(route.path)[0], frozenset(route.methods))
                          for route in _flat_routes(self.app) if getattr(route, "methods", None)]
        return sorted({m for regex, methods in self.table if regex.match(path) for m in methods})


def _flat_routes(app: FastAPI) -> list[Any]:
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before lazy router inclusion copies included routes into app.routes
        return list(app.routes)
    return list(iter_route_contexts(app.routes))


_BAD_TEXT = {"22021", "22P05"}  # character_not_in_repertoire, untranslatable_character


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of an asyncpg error, raised directly or wrapped by SQLAlchemy."""
    for candidate in (exc, getattr(exc, "orig", None), getattr(getattr(exc, "orig", None), "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries so clients see the problem+json shape per status."""
    return {
        status: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}, "description": "Problem details"}
        for status in statuses
    }


def document_edge_answers(schema: dict[str, Any]) -> dict[str, Any]:
    """Answers the edge gives to any operation, added to the OpenAPI document: 413 and 422 wherever a
    body is accepted, 503 wherever the database is used (every operation but the health checks)."""
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    added = {
        "413": {"description": "The body is larger than MAX_REQUEST_BODY_BYTES", "content": problem},
        "422": {"description": "Problem details", "content": problem},
        "503": {"description": "The database is not reachable or too busy (a write interrupted while committing "
                               "may have been recorded: retry it with the same Idempotency-Key)", "content": problem,
                "headers": {"Retry-After": {"description": "Seconds to wait before retrying",
                                            "schema": {"type": "integer"}}}},
    }
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if "health" not in operation.get("tags", ()):
                responses.setdefault("503", added["503"])
            if "requestBody" in operation:
                responses.setdefault("413", added["413"])
                responses.setdefault("422", added["422"])
    return schema
