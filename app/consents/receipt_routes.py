"""GET /v1/receipts/{id}: a receipt handed out earlier, now with the proofs that anchor it."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request

from app.auth.deps import ConsentsRead
from app.consents import receipts
from app.consents.schemas import ReceiptRead
from app.core.db import LedgerReader
from app.core.errors import problem_responses
from app.core.responses import json_response

router = APIRouter(prefix="/v1/receipts", tags=["consents"], responses=problem_responses(401, 403, 404, 422))


@router.get("/{receipt_id}", operation_id="receipts-get", response_model=ReceiptRead)
async def get_receipt(receipt_id: uuid.UUID, request: Request, principal: ConsentsRead, conn: LedgerReader):
    """The signed receipt (compact JWS) and, for each event it names, the RFC 9162 inclusion proof
    against the newest signed checkpoint: verify the JWS with the public key alone, then each
    event hash's audit path against the checkpoint's root (`pending` until the next checkpoint)."""
    return json_response(await receipts.fetch(conn, principal.tenant, receipt_id, request.app.state.proof))
