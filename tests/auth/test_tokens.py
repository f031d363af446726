"""Bearer JWT verification: every bad token is a 401 problem+json with WWW-Authenticate, a missing
scope is a 403, and every route except the health checks needs a token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from dataclasses import replace
from typing import Any, Callable

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.routing import APIRoute

from app.auth.tokens import issue
from app.core.settings import Settings
from app.main import create_app
from tests.conftest import TEST_SECRET
from tests.helpers import decisions_for, form

PROTECTED_PROBE = "/v1/purposes"  # any authenticated read; an empty list for a fresh tenant


# --- hand-made tokens (independent of the JWT library under test) -----------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode())


def hand_token(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None) -> str:
    """A compact JWS built by hand: HS256 over `hmac_key`, or an empty signature when it is None."""
    signing_input = f"{_segment(header)}.{_segment(payload)}"
    if hmac_key is None:
        return signing_input + "."
    signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


def claims(settings: Settings, tenant_id: str, /, **overrides: Any) -> dict[str, Any]:
    """Valid claims; an override of None drops the claim."""
    now = int(time.time())
    base = {"iss": settings.jwt_issuer, "aud": settings.jwt_audience, "iat": now, "exp": now + 600,
            "tenant": tenant_id, "sub": "tester", "scope": "catalog:read"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


HS256 = {"alg": "HS256", "typ": "JWT"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer"), response.headers
    problem = response.json()
    assert problem["status"] == 401
    assert problem["type"].endswith("unauthorized")
    assert problem["detail"]


# --- controls: the helpers above do make acceptable tokens ----------------------------------


async def test_control_issued_token_is_accepted(client, settings, tenant):
    token = issue(settings, tenant=tenant, sub="tester", scopes=["catalog:read"])
    response = await client.get(PROTECTED_PROBE, headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json() == []


async def test_control_hand_made_hs256_token_is_accepted(client, settings, tenant):
    token = hand_token(HS256, claims(settings, tenant), TEST_SECRET.encode())
    response = await client.get(PROTECTED_PROBE, headers=bearer(token))
    assert response.status_code == 200, response.text


async def test_token_expired_within_leeway_is_still_accepted(client, settings, tenant):
    token = issue(settings, tenant=tenant, sub="tester", scopes=["catalog:read"], ttl_seconds=-5)
    response = await client.get(PROTECTED_PROBE, headers=bearer(token))
    assert response.status_code == 200, response.text


# --- refusals --------------------------------------------------------------------------------


def _valid(settings: Settings, tenant: str) -> str:
    return issue(settings, tenant=tenant, sub="tester", scopes=["catalog:read"])


BAD_AUTHORIZATION: dict[str, Callable[[Settings, str], dict[str, str]]] = {
    "missing-header": lambda s, t: {},
    "basic-scheme": lambda s, t: {"Authorization": "Basic dXNlcjpwYXNzd29yZA=="},
    "token-scheme-with-valid-jwt": lambda s, t: {"Authorization": f"Token {_valid(s, t)}"},
    "bearer-without-token": lambda s, t: {"Authorization": "Bearer"},
    "valid-jwt-without-scheme": lambda s, t: {"Authorization": _valid(s, t)},
    "garbage": lambda s, t: bearer("not-a-jwt"),
    "garbage-three-segments": lambda s, t: bearer("aaaa.bbbb.cccc"),
    "alg-none": lambda s, t: bearer(hand_token({"alg": "none", "typ": "JWT"}, claims(s, t), None)),
    "alg-None-capitalised": lambda s, t: bearer(hand_token({"alg": "None", "typ": "JWT"}, claims(s, t), None)),
    "alg-none-with-secret-signature": lambda s, t: bearer(
        hand_token({"alg": "none", "typ": "JWT"}, claims(s, t), TEST_SECRET.encode())),
    "hs256-wrong-secret": lambda s, t: bearer(
        issue(s, tenant=t, sub="tester", scopes=["catalog:read"], key="another-secret-0123456789abcdef")),
    "tampered-payload": lambda s, t: bearer(
        _valid(s, t).split(".")[0] + "." + _segment(claims(s, "someone-else")) + "." + _valid(s, t).split(".")[2]),
    "expired-beyond-leeway": lambda s, t: bearer(
        issue(s, tenant=t, sub="tester", scopes=["catalog:read"], ttl_seconds=-120)),
    "wrong-audience": lambda s, t: bearer(
        issue(s, tenant=t, sub="tester", scopes=["catalog:read"], extra={"aud": "some-other-api"})),
    "wrong-issuer": lambda s, t: bearer(
        issue(s, tenant=t, sub="tester", scopes=["catalog:read"], extra={"iss": "https://evil.example"})),
    "missing-audience": lambda s, t: bearer(hand_token(HS256, claims(s, t, aud=None), TEST_SECRET.encode())),
    "missing-issuer": lambda s, t: bearer(hand_token(HS256, claims(s, t, iss=None), TEST_SECRET.encode())),
    "missing-exp": lambda s, t: bearer(hand_token(HS256, claims(s, t, exp=None), TEST_SECRET.encode())),
    "missing-tenant": lambda s, t: bearer(hand_token(HS256, claims(s, t, tenant=None), TEST_SECRET.encode())),
    "empty-tenant": lambda s, t: bearer(issue(s, tenant="", sub="tester", scopes=["catalog:read"])),
    "non-string-tenant": lambda s, t: bearer(hand_token(HS256, claims(s, t, tenant=42), TEST_SECRET.encode())),
    "missing-sub": lambda s, t: bearer(hand_token(HS256, claims(s, t, sub=None), TEST_SECRET.encode())),
    "scope-not-a-string": lambda s, t: bearer(
        hand_token(HS256, claims(s, t, scope=["catalog:read"]), TEST_SECRET.encode())),
    "hs512-not-in-allow-list": lambda s, t: bearer(
        issue(s, tenant=t, sub="tester", scopes=["catalog:read"], algorithm="HS512")),
    "hs384-not-in-allow-list": lambda s, t: bearer(
        issue(s, tenant=t, sub="tester", scopes=["catalog:read"], algorithm="HS384")),
}


@pytest.mark.parametrize("case", sorted(BAD_AUTHORIZATION))
async def test_bad_authorization_is_401_problem(client, settings, tenant, case):
    response = await client.get(PROTECTED_PROBE, headers=BAD_AUTHORIZATION[case](settings, tenant))
    assert_unauthorized(response)


async def test_401_detail_says_why(client, settings, tenant):
    expired = await client.get(PROTECTED_PROBE, headers=BAD_AUTHORIZATION["expired-beyond-leeway"](settings, tenant))
    assert "expired" in expired.json()["detail"]
    hs512 = await client.get(PROTECTED_PROBE, headers=BAD_AUTHORIZATION["hs512-not-in-allow-list"](settings, tenant))
    assert "HS512" in hs512.json()["detail"]
    no_tenant = await client.get(PROTECTED_PROBE, headers=BAD_AUTHORIZATION["missing-tenant"](settings, tenant))
    assert "tenant" in no_tenant.json()["detail"]


@pytest.mark.parametrize("claim", ["exp", "iss", "aud"])
async def test_missing_registered_claim_is_named_in_the_401(client, settings, tenant, claim):
    token = hand_token(HS256, claims(settings, tenant, **{claim: None}), TEST_SECRET.encode())
    response = await client.get(PROTECTED_PROBE, headers=bearer(token))
    assert_unauthorized(response)
    detail = response.json()["detail"]
    assert f"'{claim}'" in detail and "signature" not in detail, detail


@pytest.mark.parametrize("crit", [["exp"], ["b64"], ["urn:example:unknown"], [], "exp"])
async def test_token_with_a_crit_header_is_401(client, settings, tenant, crit):
    """RFC 7515 4.1.11: a recipient that does not understand every listed extension must reject the JWS;
    this service understands none (and an empty or malformed list is invalid in itself)."""
    token = hand_token({**HS256, "crit": crit}, claims(settings, tenant), TEST_SECRET.encode())
    response = await client.get(PROTECTED_PROBE, headers=bearer(token))
    assert_unauthorized(response)
    assert "crit" in response.json()["detail"]



@pytest.mark.parametrize("alg", [["HS256"], {"a": 1}, 256, None])
async def test_alg_header_that_is_not_a_string_is_401_not_500(client, settings, tenant, alg):
    """Read before the signature is checked, so anyone can send it: a forged header is a 401."""
    token = hand_token({"alg": alg, "typ": "JWT"}, claims(settings, tenant), TEST_SECRET.encode())
    response = await client.get(PROTECTED_PROBE, headers=bearer(token))
    assert_unauthorized(response)
    assert "alg" in response.json()["detail"]


@pytest.mark.parametrize("overrides", [
    {"exp": 10 ** 400}, {"exp": float("nan")}, {"exp": float("inf")}, {"nbf": float("nan")},
    {"exp": 2 ** 60}, {"tenant": "a\u0000b"},
], ids=["exp-huge", "exp-nan", "exp-inf", "nbf-nan", "exp-beyond-float", "tenant-nul"])
async def test_signed_token_with_unusable_numbers_or_tenant_is_401(client, settings, tenant, overrides):
    """Signed by the right key, still refused: an exp that never expires or overflows is no expiry."""
    payload = {**claims(settings, tenant), **overrides}  # a NUL tenant would be a 422 from the database
    signing_input = f"{_b64url(json.dumps(HS256).encode())}.{_b64url(_json_allowing_nan(payload))}"
    signature = hmac.new(TEST_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    assert_unauthorized(await client.get(PROTECTED_PROBE, headers=bearer(f"{signing_input}.{_b64url(signature)}")))


def _json_allowing_nan(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, allow_nan=True).encode()

async def test_two_authorization_headers_are_401(client, settings, tenant):
    """Two credentials are ambiguous (a proxy may read the first, the app the last): refuse both."""
    good = f"Bearer {_valid(settings, tenant)}"
    for pair in ([good, good], [good, "Bearer not-a-jwt"], ["Bearer not-a-jwt", good]):
        response = await client.get(PROTECTED_PROBE, headers=[("Authorization", pair[0]), ("Authorization", pair[1])])
        assert_unauthorized(response)
        assert "Authorization" in response.json()["detail"]
    control = await client.get(PROTECTED_PROBE, headers={"Authorization": good})
    assert control.status_code == 200, control.text


async def test_bad_token_on_a_write_route_writes_nothing(client, settings, demo, db):
    headers = BAD_AUTHORIZATION["hs256-wrong-secret"](settings, demo)
    body = {"key": "sneaky", "kind": "optional", "disclosures": {"ko": {
        "purpose": "p", "items": ["i"], "retention": "r", "refusal_right": "rr", "refusal_consequence": "rc"}}}
    assert_unauthorized(await client.post("/v1/purposes", json=body, headers=headers))
    assert await db.fetchval("SELECT count(*) FROM purposes WHERE tenant_id = $1 AND key = 'sneaky'", demo) == 0


# --- algorithm confusion: an app that allows RS256 and HS256 -------------------------------


def _private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory) -> dict[str, Any]:
    trusted = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = trusted.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    path = tmp_path_factory.mktemp("jwt") / "public.pem"
    path.write_text(public_pem)
    return {"trusted": _private_pem(trusted), "other": _private_pem(other), "public_pem": public_pem, "path": path}


@pytest.fixture(scope="module")
def rsa_settings(settings: Settings, rsa_keys) -> Settings:
    return replace(settings, jwt_algorithms=("RS256", "HS256"), jwt_secret=TEST_SECRET,
                   jwt_public_key_file=rsa_keys["path"], db_pool_size=4, db_catalog_pool_size=2)


@pytest.fixture(scope="module")
async def rsa_client(rsa_settings: Settings):
    application = create_app(rsa_settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


async def test_rs256_token_signed_with_the_trusted_key_is_accepted(rsa_client, rsa_settings, rsa_keys, tenant):
    token = issue(rsa_settings, tenant=tenant, sub="tester", scopes=["catalog:read"], algorithm="RS256",
                  key=rsa_keys["trusted"])
    response = await rsa_client.get(PROTECTED_PROBE, headers=bearer(token))
    assert response.status_code == 200, response.text


async def test_hs256_still_accepted_with_the_shared_secret_when_rs256_is_allowed(rsa_client, rsa_settings, tenant):
    token = hand_token(HS256, claims(rsa_settings, tenant), TEST_SECRET.encode())
    response = await rsa_client.get(PROTECTED_PROBE, headers=bearer(token))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("variant", ["file-text", "stripped", "der"])
async def test_hs256_token_keyed_with_the_public_key_is_refused(rsa_client, rsa_settings, rsa_keys, tenant,
                                                                variant):
    pem: str = rsa_keys["public_pem"]
    key = {
        "file-text": pem.encode(),
        "stripped": pem.strip().encode(),
        "der": base64.b64decode("".join(line for line in pem.splitlines() if "-----" not in line)),
    }[variant]
    token = hand_token(HS256, claims(rsa_settings, tenant), key)
    assert_unauthorized(await rsa_client.get(PROTECTED_PROBE, headers=bearer(token)))


async def test_rs256_token_signed_by_another_key_is_refused(rsa_client, rsa_settings, rsa_keys, tenant):
    token = issue(rsa_settings, tenant=tenant, sub="tester", scopes=["catalog:read"], algorithm="RS256",
                  key=rsa_keys["other"])
    assert_unauthorized(await rsa_client.get(PROTECTED_PROBE, headers=bearer(token)))


async def test_alg_none_refused_when_rs256_is_allowed(rsa_client, rsa_settings, tenant):
    token = hand_token({"alg": "none", "typ": "JWT"}, claims(rsa_settings, tenant), None)
    assert_unauthorized(await rsa_client.get(PROTECTED_PROBE, headers=bearer(token)))


async def test_rs256_token_refused_by_an_hs256_only_app(client, settings, rsa_keys, tenant):
    token = issue(settings, tenant=tenant, sub="tester", scopes=["catalog:read"], algorithm="RS256",
                  key=rsa_keys["trusted"])
    assert_unauthorized(await client.get(PROTECTED_PROBE, headers=bearer(token)))


def test_rs256_allowed_without_a_public_key_fails_at_start_up(settings):
    with pytest.raises(ValueError):
        create_app(replace(settings, jwt_algorithms=("RS256",), jwt_public_key_file=None))


def test_unknown_algorithm_in_allow_list_fails_at_start_up(settings):
    with pytest.raises(ValueError):
        create_app(replace(settings, jwt_algorithms=("HS256", "none")))


# --- scopes: authenticated but not allowed is 403 -------------------------------------------


def _assert_forbidden(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("forbidden")
    assert problem["status"] == 403


async def test_consents_read_token_cannot_record_consents(client, auth, demo, db):
    body = decisions_for(await form(client, auth(demo)))
    response = await client.post("/v1/subjects/s-403/consents", json=body, headers=auth(demo, "consents:read"))
    _assert_forbidden(response)
    assert "consents:write" in response.json()["detail"]
    assert await db.fetchval(
        "SELECT count(*) FROM subjects WHERE tenant_id = $1 AND external_id = 's-403'", demo) == 0
    # control: the same body with the right scope is recorded
    ok = await client.post("/v1/subjects/s-403/consents", json=body, headers=auth(demo, "consents:write"))
    assert ok.status_code == 201, ok.text


async def test_catalog_read_token_cannot_create_a_purpose(client, auth, demo, db):
    body = {"key": "read-only-attempt", "kind": "optional", "disclosures": {"ko": {
        "purpose": "p", "items": ["i"], "retention": "r", "refusal_right": "rr", "refusal_consequence": "rc"}}}
    response = await client.post("/v1/purposes", json=body, headers=auth(demo, "catalog:read"))
    _assert_forbidden(response)
    assert "catalog:write" in response.json()["detail"]
    assert await db.fetchval(
        "SELECT count(*) FROM purposes WHERE tenant_id = $1 AND key = 'read-only-attempt'", demo) == 0
    ok = await client.post("/v1/purposes", json=body, headers=auth(demo, "catalog:write"))
    assert ok.status_code == 201, ok.text


SCOPE_CASES = [
    # (scopes held, method, path, body)
    ("consents:read", "POST", "/v1/subjects/s-1/consents/marketing-sms/withdraw", None),
    ("consents:read", "POST", "/v1/subjects/s-1/consents/withdraw", {"kind": "marketing"}),
    ("catalog:write", "GET", "/v1/subjects/s-1/consents", None),
    ("consents:write", "GET", "/v1/purposes", None),
    ("consents:write", "GET", "/v1/subjects/s-1/consents/verify", None),
    ("consents:read", "GET", "/v1/subjects/s-1/consents/verify", None),
    ("catalog:read", "DELETE", "/v1/recipients/insurers", None),
    ("catalog:read", "PATCH", "/v1/processors/danal", {"name": "x"}),
    ("catalog:read", "POST", "/v1/notices/00000000-0000-0000-0000-000000000000/publish", None),
    ("self", "GET", "/v1/collection-points/signup/form", None),
    ("", "GET", "/v1/purposes", None),
]


@pytest.mark.parametrize(("scopes", "method", "path", "body"), SCOPE_CASES)
async def test_missing_scope_is_403_problem(client, settings, demo, scopes, method, path, body):
    token = issue(settings, tenant=demo, sub="tester", scopes=scopes.split())
    response = await client.request(method, path, json=body, headers=bearer(token))
    _assert_forbidden(response)


# --- every route but the health checks needs a token -----------------------------------------

# /metrics takes no JWT: METRICS_TOKEN or a loopback client guards it (tests/core/test_metrics.py).
# The JWKS is public on purpose: whoever holds a signed checkpoint or receipt (a member, an auditor,
# a webhook receiver) must be able to fetch the public keys that verify it, without an account here;
# it holds public keys only (tests/proof/test_checkpoints.py fetches it without a token).
UNAUTHENTICATED = {"/healthz", "/readyz", "/docs", "/openapi.json", "/redoc", "/docs/oauth2-redirect", "/metrics",
                   "/.well-known/consent-ledger/jwks.json"}
_SAMPLE_PARAMS = {"notice_id": str(uuid.UUID(int=1))}


def _flat_routes(application: Any) -> list[Any]:
    """Every served route, with included routers flattened (FastAPI >= 0.16x includes routers lazily)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: included routes are copied into app.routes
        return list(application.routes)
    return list(iter_route_contexts(application.routes))


def _route_table(application: Any) -> list[tuple[str, str]]:
    table = []
    for route in _flat_routes(application):
        path = getattr(route, "path", None)
        assert path, f"a route without a path (a Mount?) cannot be probed: {route!r}"
        if path in UNAUTHENTICATED:
            continue
        methods = getattr(route, "methods", None) or {"GET"}
        for method in sorted(methods - {"HEAD", "OPTIONS"}):
            table.append((method, path))
    return sorted(table)


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: _SAMPLE_PARAMS.get(m.group(1), "probe-value"), path)


# Collected from the real application factory (no database is touched without its lifespan).
ROUTES = _route_table(create_app(Settings(database_url="postgresql+asyncpg://route-table/probe",
                                          jwt_secret="route-table-probe-secret")))


def test_route_table_is_the_served_one(app):
    assert ROUTES == _route_table(app)
    assert len(ROUTES) >= 30  # the consents and catalog routers are really in it
    for route in _flat_routes(app):
        if route.path not in UNAUTHENTICATED:
            assert isinstance(getattr(route, "original_route", route), APIRoute), route


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
async def test_every_route_needs_a_token(client, method, path):
    response = await client.request(method, _concrete(path))
    assert_unauthorized(response)


def test_openapi_declares_bearer_security_on_every_protected_operation(app):
    spec = app.openapi()
    paths = spec["paths"]
    assert {p for p in paths if p not in UNAUTHENTICATED} == {p for _, p in ROUTES}
    for path, operations in paths.items():
        for method, operation in operations.items():
            if path in UNAUTHENTICATED:
                assert not operation.get("security"), (method, path)
            else:
                assert operation.get("security"), f"{method.upper()} {path} declares no security"


async def test_healthz_needs_no_token(client):
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_needs_no_token(client):
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}
