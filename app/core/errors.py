"""RFC 9457 problem details: one exception family, one set of handlers, one media type."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

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
    request: Request,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
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
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
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
        return problem_response(
            status=422, slug="validation-error", title="The request failed validation",
            detail=f"{len(errors)} field(s) failed validation; see errors[].",
            request=request, errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug, title = _HTTP_TITLES.get(exc.status_code, ("http-error", "HTTP error"))
        detail = exc.detail if isinstance(exc.detail, str) else title
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"No route matches {request.method} {request.url.path}."
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}."
        return problem_response(
            status=exc.status_code, slug=slug, title=title, detail=detail, request=request,
            headers=getattr(exc, "headers", None),
        )

    async def _database(request: Request, exc: Exception) -> JSONResponse:
        if _sqlstate(exc) in _BAD_TEXT:  # e.g. a NUL character, which PostgreSQL text cannot hold
            return problem_response(
                status=422, slug="invalid-text", title="The request is not valid",
                detail="a text value contains a character PostgreSQL cannot store (such as NUL, \\u0000); "
                       "nothing was written", request=request,
            )
        return await _unexpected(request, exc)

    for database_error in (asyncpg.PostgresError, DBAPIError):
        app.add_exception_handler(database_error, _database)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            status=500, slug="internal-error", title="Internal server error",
            detail="The server failed to handle the request; nothing was written.", request=request,
        )


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
