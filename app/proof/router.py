"""Proof routes: the public keys, signed checkpoints of the tenant's Merkle log, and RFC 9162
inclusion and consistency proofs against them (docs/proof.md)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, status

from app.auth.deps import AuditRead
from app.core.db import LedgerReader
from app.core.errors import Conflict, NotFound, problem_responses
from app.core.responses import json_response
from app.proof import checkpoint_rows, log, proofs
from app.proof.schemas import Checkpoint, CheckpointPage, ConsistencyProof, InclusionProof, Jwks

JWKS_PATH = "/.well-known/consent-ledger/jwks.json"

router = APIRouter(tags=["proof"])
audit = APIRouter(prefix="/v1/audit", tags=["proof"], responses=problem_responses(401, 403, 422))

TreeSize = Annotated[int, Path(ge=1, le=2**62, description="A checkpointed tree size")]


@router.get(JWKS_PATH, operation_id="proof-jwks", response_model=Jwks)
async def jwks(request: Request):
    """The public keys checkpoints and receipts are signed with (JWKS, Ed25519): the current key and
    retired ones. Public, no token: whoever holds a checkpoint or receipt must be able to check it."""
    return json_response(request.app.state.proof.jwks(), headers={"Cache-Control": "public, max-age=300"})


@audit.post("/checkpoints", operation_id="checkpoints-create", status_code=status.HTTP_201_CREATED,
            response_model=Checkpoint,
            responses={200: {"model": Checkpoint, "description": "Nothing new since the latest checkpoint: that one"},
                       **problem_responses(409)})
async def create_checkpoint(request: Request, principal: AuditRead, pool: LedgerReader):
    """Checkpoint the tenant's log now: every event recorded so far is placed and the tree head
    signed (201). With nothing new since the latest checkpoint, that one (200). 409 when the log is
    empty, or when nothing may be signed; the problem then says why and names what: the log no
    longer extends a checkpoint already signed (history was rewritten; `log-inconsistent`), its
    stored subtrees are not those of its entries (`log-inconsistent`), it holds events the service
    did not seal (`log-unsealed`), or a checkpoint row the service did not sign holds the tree size
    (`checkpoint-forged`)."""
    made = await log.make_checkpoint(pool, principal.tenant, request.app.state.proof, force=True,
                                     checkpoint_dir=request.app.state.settings.checkpoint_dir)
    if made is not None:
        return json_response(made, status_code=status.HTTP_201_CREATED)
    latest = await checkpoint_rows.latest(pool, principal.tenant, request.app.state.proof)
    if latest is None:
        raise Conflict("the log is empty: nothing has been recorded for this tenant yet")
    return json_response(latest)


@audit.get("/checkpoints", operation_id="checkpoints-list", response_model=CheckpointPage)
async def list_checkpoints(
    request: Request, principal: AuditRead, pool: LedgerReader,
    after: Annotated[int, Query(ge=0, le=2**62,
                                description="Only larger trees than this (next_after of the last page)")] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
):
    """The tenant's checkpoints by tree size, oldest first (only rows whose JWS verifies: a row the
    service did not sign is never listed)."""
    items = await checkpoint_rows.list_after(pool, principal.tenant, after, limit, request.app.state.proof)
    return json_response({"items": items, "next_after": items[-1]["tree_size"] if len(items) == limit else None})


@audit.get("/checkpoints/latest", operation_id="checkpoints-latest", response_model=Checkpoint,
           responses=problem_responses(404))
async def latest_checkpoint(request: Request, principal: AuditRead, pool: LedgerReader):
    """The newest checkpoint (404 before the first one)."""
    found = await checkpoint_rows.latest(pool, principal.tenant, request.app.state.proof)
    if found is None:
        raise NotFound("no checkpoint yet: the worker makes one within CHECKPOINT_INTERVAL_SECONDS of the first "
                       "event, or POST /v1/audit/checkpoints")
    return json_response(found)


@audit.get("/checkpoints/{tree_size}", operation_id="checkpoints-get", response_model=Checkpoint,
           responses=problem_responses(404))
async def get_checkpoint(request: Request, tree_size: TreeSize, principal: AuditRead, pool: LedgerReader):
    """The checkpoint of one tree size."""
    found = await checkpoint_rows.get(pool, principal.tenant, tree_size, request.app.state.proof)
    if found is None:
        raise NotFound(f"no checkpoint of tree size {tree_size}")
    return json_response(found)


@audit.get("/proofs/inclusion", operation_id="proofs-inclusion", response_model=InclusionProof,
           responses=problem_responses(404, 409))
async def inclusion_proof(
    request: Request, principal: AuditRead, pool: LedgerReader,
    event_id: Annotated[uuid.UUID, Query(description="The event (id as printed in its history)")],
    tree_size: Annotated[int | None, Query(ge=1, le=2**62, description="A checkpointed size; default: the latest")] = None,
):
    """That the event is in the log the checkpoint signs: its leaf index, leaf hash and RFC 9162
    audit path. 404 for an event this tenant does not have, or one no checkpoint covers yet (then
    `pending` is true); 422 when no checkpoint has that tree size."""
    return json_response(await proofs.inclusion(pool, principal.tenant, event_id, tree_size,
                                             proof=request.app.state.proof))


@audit.get("/proofs/consistency", operation_id="proofs-consistency", response_model=ConsistencyProof,
           responses=problem_responses(409))
async def consistency_proof(
    request: Request, principal: AuditRead, pool: LedgerReader,
    first: Annotated[int, Query(ge=1, le=2**62, description="The older checkpoint's tree size")],
    second: Annotated[int, Query(ge=1, le=2**62, description="The newer checkpoint's tree size")],
):
    """That the log at checkpoint `second` extends the log at checkpoint `first` (nothing in it was
    changed or removed): the RFC 9162 consistency proof and both signed checkpoints. 422 when either
    size has no checkpoint, or first > second."""
    return json_response(await proofs.consistency(pool, principal.tenant, first, second,
                                               proof=request.app.state.proof))


router.include_router(audit)
