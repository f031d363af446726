"""The authenticated caller and scope requirements, declared once as Annotated aliases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth.tokens import TokenError
from app.core.errors import Forbidden, Unauthorized

_bearer = HTTPBearer(auto_error=False, description="JWT with claims tenant, sub, scope, iss, aud, exp")


@dataclass(frozen=True)
class Principal:
    tenant: str
    sub: str
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        return scope in self.scopes


async def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("a Bearer token is required")
    if sum(1 for name, _ in request.scope["headers"] if name == b"authorization") > 1:
        raise Unauthorized("send one Authorization header, not several")
    try:
        claims = request.app.state.token_verifier.verify(credentials.credentials)
    except TokenError as exc:
        raise Unauthorized(str(exc)) from exc
    if not await request.app.state.known_tenants.contains(request.app.state.pool, claims.tenant):
        raise Unauthorized("the token's tenant is not a tenant of this service")
    return Principal(tenant=claims.tenant, sub=claims.sub, scopes=claims.scopes)


def require(*any_of: str):
    """A dependency admitting a caller holding at least one of the scopes."""

    async def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not principal.scopes.intersection(any_of):
            raise Forbidden(f"this operation needs the scope {' or '.join(repr(s) for s in any_of)}")
        return principal

    dependency.__name__ = "require_" + "_or_".join(s.replace(":", "_") for s in any_of)
    return dependency


ConsentsWrite = Annotated[Principal, Depends(require("consents:write"))]
ConsentsRead = Annotated[Principal, Depends(require("consents:read", "consents:write", "audit:read"))]
CatalogWrite = Annotated[Principal, Depends(require("catalog:write"))]
CatalogRead = Annotated[Principal, Depends(require("catalog:read", "catalog:write"))]
FormRead = Annotated[Principal, Depends(require("consents:write", "consents:read", "catalog:read", "catalog:write"))]
AuditRead = Annotated[Principal, Depends(require("audit:read"))]
WebhooksAdmin = Annotated[Principal, Depends(require("webhooks:admin"))]
