"""JWT verification and issuing. The ONLY module that imports the JWT library.

The algorithm comes from an explicit allow-list, and the key is chosen by the algorithm's family:
an HMAC token is checked only against the shared secret, an RSA/EC token only against public keys.
That closes `alg: none` and the classic public-key-as-HMAC-secret confusion.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from jose import JWTError, jwt
from jose.exceptions import JWTClaimsError

from app.core.settings import Settings

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"})


class TokenError(Exception):
    """Why a token was refused; the message is safe to show to the caller."""


@dataclass(frozen=True)
class Claims:
    tenant: str
    sub: str
    scopes: frozenset[str]
    expires_at: float = 0.0
    # A processor's token (claim `processor`: its key in the tenant's registry): the permission
    # checks answer it only for the channels its webhook endpoints serve.
    processor: str | None = None


CACHE_SIZE = 4096


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        unknown = set(settings.jwt_algorithms) - HMAC_ALGORITHMS - ASYMMETRIC_ALGORITHMS
        if unknown:
            raise ValueError(f"JWT_ALGORITHMS has unsupported entries: {sorted(unknown)}")
        self.algorithms = frozenset(settings.jwt_algorithms)
        self.secret = settings.jwt_secret
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.leeway = settings.jwt_leeway_seconds
        self.public_keys: list[Any] = []
        if settings.jwt_public_key_file:
            self.public_keys.append(settings.jwt_public_key_file.read_text())
        if settings.jwt_jwks_file:
            self.public_keys.extend(json.loads(settings.jwt_jwks_file.read_text()).get("keys", []))
        if self.algorithms & HMAC_ALGORITHMS and not self.secret:
            raise ValueError("an HMAC algorithm is allowed but JWT_SECRET is not set")
        if self.algorithms & ASYMMETRIC_ALGORITHMS and not self.public_keys:
            raise ValueError("an RSA/EC algorithm is allowed but no JWT_PUBLIC_KEY_FILE or JWT_JWKS_FILE is set")
        # Tokens that already verified, until they expire: a client sends the same token on every
        # call, and verifying it again cost ~90 us of the ~400 us a read takes (bench/). Only
        # successes are kept, keyed by the whole token (signature included), bounded in size.
        self._verified: dict[str, Claims] = {}

    def verify(self, token: str) -> Claims:
        claims = self._verified.get(token)
        if claims is not None and claims.expires_at + self.leeway > time.time():
            return claims
        claims = self._verify(token)
        if len(self._verified) >= CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    def _keys_for(self, header: dict[str, Any]) -> list[Any]:
        alg = header.get("alg")
        if alg in HMAC_ALGORITHMS:
            return [self.secret]
        kid = header.get("kid")
        keys = [k for k in self.public_keys if not isinstance(k, dict) or kid is None or k.get("kid") == kid]
        return [k for k in keys if not isinstance(k, dict) or k.get("alg") in (None, alg)]

    def _verify(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except JWTError as exc:
            raise TokenError("the token is not a well-formed JWT") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:  # a list or object here is a forgery
            raise TokenError(f"the token's 'alg' header {alg!r:.40} is not an accepted algorithm")
        if "crit" in header:  # RFC 7515 4.1.11: this service understands no extension, so none may be critical
            raise TokenError("the token's 'crit' header names extensions this service does not support")
        payload: dict[str, Any] | None = None
        last_error: Exception | None = None
        for key in self._keys_for(header):
            try:
                payload = jwt.decode(token, key, algorithms=[alg], options=SIGNATURE_ONLY)
                break
            except JWTClaimsError as exc:
                raise TokenError(f"the token's claims are not accepted: {exc}") from exc
            except JWTError as exc:
                last_error = exc
        if payload is None:
            raise TokenError("the token's signature does not verify") from last_error
        self._check_registered_claims(payload)
        return _claims(payload)

    def _check_registered_claims(self, payload: dict[str, Any]) -> None:
        """exp, iss and aud are required and checked here, after the signature, so that a refusal names
        the claim (the JWT library reports a missing claim as a generic verification failure)."""
        for claim in ("exp", "iss", "aud"):
            if claim not in payload:
                raise TokenError(f"the token has no '{claim}' claim")
        now = time.time()
        exp, nbf = payload["exp"], payload.get("nbf")
        if not _is_number(exp):
            raise TokenError("the token's 'exp' claim is not a number")
        if exp + self.leeway < now:
            raise TokenError("the token has expired")
        if nbf is not None and (not _is_number(nbf) or nbf - self.leeway > now):
            raise TokenError("the token's 'nbf' claim is not a time in the past")
        if payload["iss"] != self.issuer:
            raise TokenError("the token's 'iss' claim is not an accepted issuer")
        audience = payload["aud"]
        if not (audience == self.audience or isinstance(audience, list) and self.audience in audience):
            raise TokenError("the token's 'aud' claim does not name this service")


# The signature (and the shape of sub, iat, jti) by the library; exp, nbf, iss and aud by
# TokenVerifier._check_registered_claims.
SIGNATURE_ONLY = {"verify_exp": False, "verify_nbf": False, "verify_iss": False, "verify_aud": False}


# Times a token may name: not NaN or infinite (a NaN `exp` would never expire), and within what a
# float holds exactly enough to compare (an integer of 400 digits overflows float()).
_LATEST = 2 ** 53


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and -_LATEST < value < _LATEST)  # False for NaN and infinities too


def _claims(payload: dict[str, Any]) -> Claims:
    tenant, sub, scope = payload.get("tenant"), payload.get("sub"), payload.get("scope", "")
    if not isinstance(tenant, str) or not tenant:
        raise TokenError("the token has no 'tenant' claim")
    if "\x00" in tenant or len(tenant) > 255:
        raise TokenError("the token's 'tenant' claim is not a tenant key")
    if not isinstance(sub, str) or not sub:
        raise TokenError("the token has no 'sub' claim")
    if not isinstance(scope, str):
        raise TokenError("the 'scope' claim must be a space-separated string")
    processor = payload.get("processor")
    if processor is not None and (not isinstance(processor, str) or not 0 < len(processor) <= 64
                                  or "\x00" in processor):
        raise TokenError("the token's 'processor' claim is not a processor key")
    return Claims(tenant=tenant, sub=sub, scopes=frozenset(scope.split()), expires_at=float(payload["exp"]),
                  processor=processor)


def issue(
    settings: Settings,
    *,
    tenant: str,
    sub: str,
    scopes: list[str] | tuple[str, ...],
    ttl_seconds: int = 3600,
    algorithm: str = "HS256",
    key: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Development and test tokens; production tokens come from the tenant's identity provider."""
    now = int(time.time())
    claims = {
        "iss": settings.jwt_issuer, "aud": settings.jwt_audience, "iat": now, "exp": now + ttl_seconds,
        "tenant": tenant, "sub": sub, "scope": " ".join(scopes), **(extra or {}),
    }
    return jwt.encode(claims, key if key is not None else settings.jwt_secret, algorithm=algorithm)
