"""GET /v1/subjects/{id}/certificate (auditors, `audit:read`) and GET /v1/me/certificate (the person,
`self`): one member's consents as a printable, self-contained HTML certificate (issue 11 point 6)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.auth.deps import AuditRead, Self
from app.certificate import gather, render
from app.certificate.style import HEADERS
from app.consents.me_routes import _member
from app.consents.router import SubjectId
from app.core.db import AuditReader
from app.core.errors import problem_responses
from app.proof.router import JWKS_PATH

router = APIRouter(tags=["certificate"], responses=problem_responses(401, 403, 404, 422))

HTML = {200: {"content": {"text/html": {}},
              "description": "The certificate: one HTML document, inline CSS and SVG, no script, nothing fetched"}}


async def _certificate(request: Request, pool, tenant: str, member: str, requested_by: str | None) -> HTMLResponse:
    found = await gather.gather(pool, tenant, member, proof=request.app.state.proof, now=datetime.now(UTC),
                                jwks_url=str(request.base_url).rstrip("/") + JWKS_PATH, requested_by=requested_by)
    return HTMLResponse(render.render(found), headers=HEADERS)


@router.get("/v1/subjects/{subject_id}/certificate", operation_id="certificate-subject", response_class=HTMLResponse,
            responses=HTML)
async def subject_certificate(subject_id: SubjectId, request: Request, principal: AuditRead, pool: AuditReader):
    """A consent certificate for one member, to print or hand to a regulator: per purpose the state's
    timeline (a chart and a table), the wording shown at each act and the legal basis, the evidence
    commitments (never raw IP or user agent), each event's hash, seal and RFC 9162 inclusion proof
    against the newest signed checkpoint, and how to check it (Korean and English)."""
    return await _certificate(request, pool, principal.tenant, subject_id, principal.sub)


@router.get("/v1/me/certificate", operation_id="me-certificate", response_class=HTMLResponse, responses=HTML)
async def my_certificate(request: Request, principal: Self, pool: AuditReader):
    """My consent certificate (PIPA Art. 35): the same document an auditor gets for me, about me only."""
    return await _certificate(request, pool, principal.tenant, _member(principal), None)
