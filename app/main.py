"""Application factory: settings, database engine, token verifier, routers, problem+json errors."""

from __future__ import annotations

import asyncio
import gc
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.auth.tokens import TokenVerifier
from app.catalog.router import router as catalog_router
from app.permissions.router import router as permissions_router
from app.duties.router import router as duties_router
from app.consents.me_routes import router as me_router
from app.audit.router import router as audit_router
from app.audit.changes import router as changes_router
from app.audit.bundle_route import router as bundle_router
from app.certificate.router import router as certificate_router
from app.audit.verifications import router as verifications_router
from app.permissions.audience_router import AUDIENCE_PATH
from app.permissions.audience_router import router as audience_router
from app.permissions.transactions import router as transactions_router
from app.catalog.tenants import KnownTenants
from app.consents.receipt_routes import router as receipts_router
from app.consents.router import router as consents_router
from app.core import errors, metrics
from app.core.db import create_engine, create_pool, session_factory
from app.core.http import Edge
from app.core.settings import Settings, get_settings
from app.proof.context import Proof
from app.proof.router import router as proof_router
from app.webhooks.router import router as webhooks_router

API_DESCRIPTION = """\
Proof of consent for Korean online services: granular opt-in consents (never pre-checked),
refusals and withdrawals, per-recipient third-party consents, with a tamper-evident history.

Every route except the health checks and the public keys (`/.well-known/consent-ledger/jwks.json`,
which verifiers of checkpoints and receipts must fetch) needs `Authorization: Bearer <JWT>` with the
claims `tenant`, `sub`, `scope`, `iss`, `aud`, `exp`. Errors are RFC 9457 `application/problem+json`.
"""


GC_YOUNG_THRESHOLD = 20_000


def _consume(task: asyncio.Future) -> None:
    """Retrieve an abandoned probe's outcome, so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set (use `consent-ledger dev` for an embedded PostgreSQL)")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Before anything connects: a service that cannot seal or sign must not record (docs/proof.md).
        app.state.proof = Proof.from_settings(settings)
        engine = create_engine(settings.database_url, settings)
        app.state.engine = engine
        app.state.sessions = session_factory(engine)
        app.state.pool = await create_pool(settings.database_url, settings)
        app.state.audit_pool = (await create_pool(settings.audit_database_url, settings)
                                if settings.audit_database_url else app.state.pool)
        app.state.known_tenants = KnownTenants(settings.tenant_cache_seconds)
        # What exists now (routes, models, settings, imported modules) lives as long as the process:
        # out of the collector's sight, a full collection no longer walks it, which took milliseconds
        # of a request's latency now and then (the p99 in bench/).
        gc.collect()
        gc.freeze()
        # A request allocates thousands of short-lived containers; with the default threshold (700)
        # the young generation is scanned several times per request and objects of the requests in
        # flight get promoted and rescanned in older generations. A larger first threshold lets
        # them die by reference count first (measured on a recording: GC time ~0.05 -> ~0.01 ms).
        gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
        try:
            yield
        finally:
            if app.state.audit_pool is not app.state.pool:
                await app.state.audit_pool.close()
            await app.state.pool.close()
            await engine.dispose()

    app = FastAPI(
        title="consent-ledger", version="0.1.0", description=API_DESCRIPTION, lifespan=lifespan,
        openapi_tags=[
            {"name": "consents", "description": "Record, withdraw and read a subject's consents"},
            {"name": "collection-points", "description": "Where consent is asked, and the form to show"},
            {"name": "purposes", "description": "Consent items and their disclosures"},
            {"name": "notices", "description": "Published policy / consent wording versions"},
            {"name": "recipients", "description": "Third parties (제3자) that receive data"},
            {"name": "processors", "description": "Outsourced processors (수탁사), disclosed"},
            {"name": "webhooks", "description": "Signed notifications to processors when consent changes"},
            {"name": "proof", "description": "Signed checkpoints of the tenant's Merkle log, inclusion and "
                                             "consistency proofs, the public keys (docs/proof.md)"},
            {"name": "duties", "description": "What the law requires after an act: result notices, "
                                              "reconfirmations, processors' suppression, with proof (docs/duties.md)"},
            {"name": "audit", "description": "Tenant-wide search and export of the ledger (scope audit:read)"},
            {"name": "certificate", "description": "One member's consents as a printable HTML certificate with "
                                                  "its proofs (Korean and English)"},
            {"name": "me", "description": "The person's own view (PIPA Art. 35): a token of scope `self`, "
                                         "sub = member id"},
            {"name": "health", "description": "Unauthenticated liveness and readiness"},
        ],
    )
    app.state.settings = settings
    app.state.token_verifier = TokenVerifier(settings)
    errors.install(app)
    app.add_middleware(Edge, max_body_bytes=settings.max_request_body_bytes,
                       large_bodies=(AUDIENCE_PATH, settings.max_audience_body_bytes))
    app.add_api_route("/metrics", metrics.endpoint(settings), methods=["GET"], include_in_schema=False)
    app.include_router(consents_router)
    app.include_router(receipts_router)
    app.include_router(permissions_router)
    app.include_router(transactions_router)
    app.include_router(audience_router)
    app.include_router(catalog_router)
    app.include_router(duties_router)
    app.include_router(me_router)
    app.include_router(audit_router)
    app.include_router(changes_router)
    app.include_router(bundle_router)
    app.include_router(certificate_router)
    app.include_router(verifications_router)
    app.include_router(webhooks_router)
    app.include_router(proof_router)

    @app.get("/healthz", tags=["health"], operation_id="health-live")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], operation_id="health-ready", responses=errors.problem_responses(503))
    async def readyz(request: Request):
        # The ledger's pool serves recording and reads; a hung database must answer "not ready"
        # well within a load balancer's probe timeout, not after the pool's own waits.
        # The probe runs as its own task and is not waited for past 2 s: cancelling a query on a
        # database that stopped answering waits for the cancellation itself, which never comes.
        probe = asyncio.ensure_future(request.app.state.pool.fetchval("SELECT 1", timeout=2))
        done, _ = await asyncio.wait({probe}, timeout=2)
        if not done or probe.exception() is not None:
            if not done:  # abandoned: its outcome is retrieved when it ends, so asyncio logs nothing
                probe.cancel()
                probe.add_done_callback(_consume)
            return errors.problem_response(
                status=503, slug="not-ready", title="Not ready", detail="the database is not reachable",
                request=request, headers={"Retry-After": str(errors.RETRY_AFTER_SECONDS)},
            )
        return JSONResponse({"status": "ready"})

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = errors.document_edge_answers(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi
    return app
