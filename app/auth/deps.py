"""The authenticated caller and scope requirements, declared once as Annotated aliases.

Each alias is one dependency, a `HTTPBearer` subclass that does the whole check (header, token,
tenant, scope) in one call: FastAPI still documents the Bearer scheme in OpenAPI because the
dependency is a security scheme, and a request resolves one dependency instead of a chain of three
(header model, token, scope), which measured ~8 % of a state read's CPU (docs/design.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from app.auth.tokens import TokenError
from app.core import actor
from app.core.errors import Forbidden, Unauthorized

BEARER_DESCRIPTION = "JWT with claims tenant, sub, scope, iss, aud, exp"


@dataclass(frozen=True)
class Principal:
    tenant: str
    sub: str
    scopes: frozenset[str]
    processor: str | None = None  # a processor's token: see app/permissions/scope.py

    def has(self, scope: str) -> bool:
        return scope in self.scopes


async def authenticate(request: Request) -> Principal:
    """The caller behind the request's Bearer token, or 401: one Authorization header, a token that
    verifies, and a tenant that exists."""
    headers = request.scope["headers"]
    values = [value for name, value in headers if name == b"authorization"]
    if not values:
        raise Unauthorized("a Bearer token is required")
    if len(values) > 1:
        raise Unauthorized("send one Authorization header, not several")
    scheme, _, token = values[0].decode("latin-1").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("a Bearer token is required")
    state = request.app.state
    try:
        claims = state.token_verifier.verify(token)
    except TokenError as exc:
        raise Unauthorized(str(exc)) from exc
    if not await state.known_tenants.contains(state.pool, claims.tenant):
        raise Unauthorized("the token's tenant is not a tenant of this service")
    return Principal(tenant=claims.tenant, sub=claims.sub, scopes=claims.scopes, processor=claims.processor)


class _Require(HTTPBearer):
    """A caller holding at least one of the scopes."""

    def __init__(self, *any_of: str, acts: bool = False) -> None:
        super().__init__(auto_error=False, description=BEARER_DESCRIPTION, scheme_name="HTTPBearer")
        self.any_of = frozenset(any_of)
        self.acts = acts
        self.message = f"this operation needs the scope {' or '.join(repr(s) for s in any_of)}"

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        principal = await authenticate(request)
        if not principal.scopes & self.any_of:
            raise Forbidden(self.message)
        if self.acts:  # the catalog history names the token's subject (app/core/actor.py)
            actor.current.set(principal.sub)
        return principal


def require(*any_of: str, acts: bool = False) -> _Require:
    """`acts`: the scope changes the catalog, whose history records who (the token's `sub`)."""
    return _Require(*any_of, acts=acts)


ConsentsWrite = Annotated[Principal, Depends(require("consents:write"))]
ConsentsRead = Annotated[Principal, Depends(require("consents:read", "consents:write", "audit:read"))]
CatalogWrite = Annotated[Principal, Depends(require("catalog:write", acts=True))]
CatalogRead = Annotated[Principal, Depends(require("catalog:read", "catalog:write"))]
FormRead = Annotated[Principal, Depends(require("consents:write", "consents:read", "catalog:read", "catalog:write",
                                                "audit:read"))]
AuditRead = Annotated[Principal, Depends(require("audit:read"))]
# A processor's token: may ask whether an ad may be sent (nothing else); operators' read scopes too.
PermissionsRead = Annotated[Principal, Depends(require("permissions:read", "consents:read", "consents:write",
                                                       "audit:read"))]
WebhooksAdmin = Annotated[Principal, Depends(require("webhooks:admin"))]
# Duties (docs/duties.md): the privacy officer's tools read and fulfil; a processor's token
# (claim `processor`) sees and acknowledges only its own suppression duties.
# The person themself (PIPA Art. 35): the token's `sub` is their member id, the tenant the token's.
Self = Annotated[Principal, Depends(require("self"))]
DutiesRead = Annotated[Principal, Depends(require("duties:read", "duties:write", "duties:ack", "audit:read"))]
DutiesWrite = Annotated[Principal, Depends(require("duties:write"))]
DutiesAck = Annotated[Principal, Depends(require("duties:ack"))]
