"""Webhook routes: endpoints and secrets, the delivery log, retry, recover, test events."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from app.auth.deps import WebhooksAdmin
from app.core.db import LedgerReader, LedgerWriter
from app.core.errors import problem_responses
from app.core.schemas import UtcDatetime
from app.webhooks import schemas, service

router = APIRouter(prefix="/v1", tags=["webhooks"], responses=problem_responses(401, 403, 404, 422))


@router.post("/webhook-endpoints", operation_id="webhooks-create-endpoint", status_code=status.HTTP_201_CREATED,
             response_model=schemas.EndpointWithSecret)
async def create_endpoint(body: schemas.EndpointCreate, request: Request, principal: WebhooksAdmin,
                          pool: LedgerReader):
    """Register a receiver. The URL must be https and resolve to a public address (unless the
    operator allow-listed it). The response carries the signing secret: the only time it is shown."""
    await service.check_url(body.url, request.app.state.settings)
    async with pool.acquire() as conn, conn.transaction():
        return await service.create_endpoint(conn, principal, body)


@router.get("/webhook-endpoints", operation_id="webhooks-list-endpoints",
            response_model=list[schemas.EndpointRead])
async def list_endpoints(principal: WebhooksAdmin, pool: LedgerReader):
    return await service.list_endpoints(pool, principal)


@router.get("/webhook-endpoints/{endpoint_id}", operation_id="webhooks-get-endpoint",
            response_model=schemas.EndpointRead)
async def get_endpoint(endpoint_id: uuid.UUID, principal: WebhooksAdmin, pool: LedgerReader):
    return await service.get_endpoint(pool, principal, endpoint_id)


@router.patch("/webhook-endpoints/{endpoint_id}", operation_id="webhooks-update-endpoint",
              response_model=schemas.EndpointRead)
async def update_endpoint(endpoint_id: uuid.UUID, body: schemas.EndpointUpdate, request: Request,
                          principal: WebhooksAdmin, pool: LedgerReader):
    """Change the URL, filters or description; `enabled: true` re-enables an endpoint the service
    disabled, and what waited meanwhile is sent in order (its failure streak starts afresh)."""
    await service.check_url(body.url, request.app.state.settings)
    async with pool.acquire() as conn, conn.transaction():
        return await service.update_endpoint(conn, principal, endpoint_id, body)


@router.delete("/webhook-endpoints/{endpoint_id}", operation_id="webhooks-delete-endpoint",
               status_code=status.HTTP_204_NO_CONTENT)
async def delete_endpoint(endpoint_id: uuid.UUID, principal: WebhooksAdmin, conn: LedgerWriter):
    await service.delete_endpoint(conn, principal, endpoint_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/webhook-endpoints/{endpoint_id}/rotate-secret", operation_id="webhooks-rotate-secret",
             response_model=schemas.EndpointWithSecret)
async def rotate_secret(endpoint_id: uuid.UUID, request: Request, principal: WebhooksAdmin, conn: LedgerWriter,
                        body: schemas.RotateIn | None = None):
    """A new secret, shown once. Until `secret_rotation_ends_at` every delivery carries two
    signatures (new and old secret), so receivers can switch without losing a message."""
    grace = service.grace(request.app.state.settings, body.grace_seconds if body else None)
    return await service.rotate_secret(conn, principal, endpoint_id, grace)


@router.post("/webhook-endpoints/{endpoint_id}/test", operation_id="webhooks-send-test",
             status_code=status.HTTP_202_ACCEPTED, response_model=schemas.Queued)
async def send_test(endpoint_id: uuid.UUID, principal: WebhooksAdmin, conn: LedgerWriter):
    """Queue a `webhook.test` message to this endpoint; follow it in the delivery log."""
    return await service.send_test(conn, principal, endpoint_id)


@router.post("/webhook-endpoints/{endpoint_id}/recover", operation_id="webhooks-recover",
             status_code=status.HTTP_202_ACCEPTED, response_model=schemas.Recovered)
async def recover(endpoint_id: uuid.UUID, body: schemas.RecoverIn, principal: WebhooksAdmin, conn: LedgerWriter):
    """Send again every failed delivery of this endpoint created since `since` (and before `until`)."""
    return await service.recover(conn, principal, endpoint_id, body)


@router.get("/webhook-endpoints/{endpoint_id}/deliveries", operation_id="webhooks-list-deliveries",
            response_model=schemas.DeliveryPage)
async def list_deliveries(
    endpoint_id: uuid.UUID, principal: WebhooksAdmin, pool: LedgerReader,
    status: schemas.DeliveryStatus | None = None,
    type: Annotated[str | None, Query(max_length=64, description="e.g. consent.withdrawn")] = None,
    subject_id: Annotated[str | None, Query(max_length=255)] = None,
    since: Annotated[UtcDatetime | None, Query(description="created at or after")] = None,
    until: Annotated[UtcDatetime | None, Query(description="created before")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
):
    """Newest first."""
    return await service.list_deliveries(pool, principal, endpoint_id=endpoint_id, status=status, type_=type,
                                         subject_id=subject_id, since=since, until=until, cursor=cursor,
                                         limit=limit)


@router.get("/webhook-deliveries/{delivery_id}", operation_id="webhooks-get-delivery",
            response_model=schemas.DeliveryDetail)
async def get_delivery(delivery_id: uuid.UUID, principal: WebhooksAdmin, pool: LedgerReader):
    """One delivery with every attempt: time, status code, latency, response excerpt, error."""
    return await service.get_delivery(pool, principal, delivery_id)


@router.post("/webhook-deliveries/{delivery_id}/retry", operation_id="webhooks-retry-delivery",
             status_code=status.HTTP_202_ACCEPTED, response_model=schemas.DeliveryDetail,
             responses=problem_responses(409))
async def retry_delivery(delivery_id: uuid.UUID, principal: WebhooksAdmin, conn: LedgerWriter):
    """Send this delivery again now, with the same webhook-id, on a fresh round of the retry
    schedule (a dead letter, a delivered message to replay, or one waiting for its next retry).
    409 while a worker is sending it."""
    return await service.retry_delivery(conn, principal, delivery_id)


@router.get("/webhook-messages/{message_id}", operation_id="webhooks-get-message",
            response_model=schemas.MessageRead)
async def get_message(message_id: uuid.UUID, principal: WebhooksAdmin, pool: LedgerReader):
    """A message (the body sent) and its delivery to each endpoint."""
    return await service.get_message(pool, principal, message_id)
