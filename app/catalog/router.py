"""Catalog routes: purposes, notices, collection points (and their form), recipients, processors."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.auth.deps import CatalogRead, CatalogWrite, FormRead
from app.catalog import history, purposes, schemas, service
from app.catalog.models import CollectionPoint, Processor, Purpose, Recipient
from app.core.db import Session
from app.core.errors import InvalidRequest, problem_responses
from app.core.schemas import UtcDatetime

router = APIRouter(prefix="/v1", responses=problem_responses(401, 403, 422))
NOT_FOUND = problem_responses(404)
CONFLICT = problem_responses(409)


# --- recipients -------------------------------------------------------------------------------


@router.post("/recipients", tags=["recipients"], operation_id="recipients-create",
             status_code=status.HTTP_201_CREATED, response_model=schemas.RecipientRead, responses=CONFLICT)
async def create_recipient(body: schemas.RecipientCreate, principal: CatalogWrite, session: Session):
    return await service.add(session, Recipient(id=uuid.uuid4(), tenant_id=principal.tenant, **body.model_dump()))


@router.get("/recipients", tags=["recipients"], operation_id="recipients-list",
            response_model=list[schemas.RecipientRead])
async def list_recipients(principal: CatalogRead, session: Session):
    return await service.list_all(session, principal, Recipient)


@router.get("/recipients/{key}", tags=["recipients"], operation_id="recipients-get",
            response_model=schemas.RecipientRead, responses=NOT_FOUND)
async def get_recipient(key: str, principal: CatalogRead, session: Session):
    return await service.get_by_key(session, principal, Recipient, key)


@router.patch("/recipients/{key}", tags=["recipients"], operation_id="recipients-update",
              response_model=schemas.RecipientRead, responses=NOT_FOUND)
async def update_recipient(key: str, body: schemas.RecipientUpdate, principal: CatalogWrite, session: Session):
    return await purposes.update_recipient(session, principal, key, body)


@router.delete("/recipients/{key}", tags=["recipients"], operation_id="recipients-delete",
               status_code=status.HTTP_204_NO_CONTENT, responses={**NOT_FOUND, **CONFLICT})
async def delete_recipient(key: str, principal: CatalogWrite, session: Session):
    await service.remove(session, await service.get_by_key(session, principal, Recipient, key))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- processors -------------------------------------------------------------------------------


@router.post("/processors", tags=["processors"], operation_id="processors-create",
             status_code=status.HTTP_201_CREATED, response_model=schemas.ProcessorRead, responses=CONFLICT)
async def create_processor(body: schemas.ProcessorCreate, principal: CatalogWrite, session: Session):
    return await service.add(session, Processor(id=uuid.uuid4(), tenant_id=principal.tenant, **body.model_dump()))


@router.get("/processors", tags=["processors"], operation_id="processors-list",
            response_model=list[schemas.ProcessorRead])
async def list_processors(principal: CatalogRead, session: Session):
    return await service.list_all(session, principal, Processor)


@router.get("/processors/{key}", tags=["processors"], operation_id="processors-get",
            response_model=schemas.ProcessorRead, responses=NOT_FOUND)
async def get_processor(key: str, principal: CatalogRead, session: Session):
    return await service.get_by_key(session, principal, Processor, key)


@router.patch("/processors/{key}", tags=["processors"], operation_id="processors-update",
              response_model=schemas.ProcessorRead, responses=NOT_FOUND)
async def update_processor(key: str, body: schemas.ProcessorUpdate, principal: CatalogWrite, session: Session):
    processor = await service.get_by_key(session, principal, Processor, key)
    service.apply(processor, body.changes())
    await session.flush()
    return processor


@router.delete("/processors/{key}", tags=["processors"], operation_id="processors-delete",
               status_code=status.HTTP_204_NO_CONTENT, responses={**NOT_FOUND, **CONFLICT})
async def delete_processor(key: str, principal: CatalogWrite, session: Session):
    await service.remove(session, await service.get_by_key(session, principal, Processor, key))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- purposes ---------------------------------------------------------------------------------


@router.post("/purposes", tags=["purposes"], operation_id="purposes-create",
             status_code=status.HTTP_201_CREATED, response_model=schemas.PurposeRead,
             responses={**NOT_FOUND, **CONFLICT})
async def create_purpose(body: schemas.PurposeCreate, principal: CatalogWrite, session: Session):
    purpose = await purposes.create_purpose(session, principal, body)
    return purposes.purpose_read(purpose, await purposes.recipient_keys(session, [purpose]))


@router.get("/purposes", tags=["purposes"], operation_id="purposes-list", response_model=list[schemas.PurposeRead])
async def list_purposes(principal: CatalogRead, session: Session):
    rows = await service.list_all(session, principal, Purpose)
    recipients = await purposes.recipient_keys(session, rows)
    return [purposes.purpose_read(p, recipients) for p in rows]


@router.get("/purposes/{key}", tags=["purposes"], operation_id="purposes-get",
            response_model=schemas.PurposeRead, responses=NOT_FOUND)
async def get_purpose(key: str, principal: CatalogRead, session: Session):
    purpose = await service.get_by_key(session, principal, Purpose, key)
    return purposes.purpose_read(purpose, await purposes.recipient_keys(session, [purpose]))


@router.patch("/purposes/{key}", tags=["purposes"], operation_id="purposes-update",
              response_model=schemas.PurposeRead, responses=NOT_FOUND)
async def update_purpose(key: str, body: schemas.PurposeUpdate, principal: CatalogWrite, session: Session):
    purpose = await purposes.update_purpose(session, principal, key, body)
    return purposes.purpose_read(purpose, await purposes.recipient_keys(session, [purpose]))


@router.post("/purposes/{key}/reclassify", tags=["purposes"], operation_id="purposes-reclassify",
             response_model=schemas.PurposeRead, responses={**NOT_FOUND, **CONFLICT})
async def reclassify_purpose(key: str, body: schemas.PurposeReclassify, principal: CatalogWrite, session: Session):
    """Move a purpose to another legal basis from now on (e.g. a pre-2023 "required" consent to
    `contract`, PIPA Art. 15(1)4). Recorded in the purpose's basis history with the token's `sub`
    and the reason; events recorded before are never rewritten."""
    purpose = await purposes.reclassify_purpose(session, principal, key, body)
    return purposes.purpose_read(purpose, await purposes.recipient_keys(session, [purpose]))


@router.get("/purposes/{key}/basis-history", tags=["purposes"], operation_id="purposes-basis-history",
            response_model=list[schemas.PurposeBasisChangeRead], responses=NOT_FOUND)
async def purpose_basis_history(key: str, principal: CatalogRead, session: Session):
    """Every change of the purpose's legal basis: from what, to what, from when, by whom, why."""
    return await purposes.basis_history(session, principal, key)


# --- notices ----------------------------------------------------------------------------------


@router.post("/notices", tags=["notices"], operation_id="notices-create", status_code=status.HTTP_201_CREATED,
             response_model=schemas.NoticeDetail, responses=CONFLICT)
async def create_notice(body: schemas.NoticeCreate, principal: CatalogWrite, session: Session):
    return await service.create_notice(session, principal, body)


@router.get("/notices", tags=["notices"], operation_id="notices-list", response_model=list[schemas.NoticeRead])
async def list_notices(principal: CatalogRead, session: Session):
    return await service.list_all(session, principal, service.Notice)


@router.get("/notices/{notice_id}", tags=["notices"], operation_id="notices-get",
            response_model=schemas.NoticeDetail, responses=NOT_FOUND)
async def get_notice(notice_id: uuid.UUID, principal: CatalogRead, session: Session):
    return await service.get_notice(session, principal, notice_id)


@router.patch("/notices/{notice_id}", tags=["notices"], operation_id="notices-update",
              response_model=schemas.NoticeDetail, responses={**NOT_FOUND, **CONFLICT})
async def update_notice(notice_id: uuid.UUID, body: schemas.NoticeUpdate, principal: CatalogWrite, session: Session):
    return await service.update_notice(session, principal, notice_id, body)


@router.post("/notices/{notice_id}/publish", tags=["notices"], operation_id="notices-publish",
             response_model=schemas.NoticeDetail, responses={**NOT_FOUND, **CONFLICT})
async def publish_notice(notice_id: uuid.UUID, principal: CatalogWrite, session: Session,
                         body: schemas.NoticePublish | None = None):
    """Publish a draft: from then on it never changes. A new version of a published notice must take
    effect 7 days after (30 when unfavourable or material), unless forced with a recorded reason."""
    return await service.publish_notice(session, principal, notice_id, body.force_reason if body else None)


@router.delete("/notices/{notice_id}", tags=["notices"], operation_id="notices-delete",
               status_code=status.HTTP_204_NO_CONTENT, responses={**NOT_FOUND, **CONFLICT})
async def delete_notice(notice_id: uuid.UUID, principal: CatalogWrite, session: Session):
    await service.delete_notice(session, principal, notice_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- collection points ------------------------------------------------------------------------


@router.post("/collection-points", tags=["collection-points"], operation_id="collection-points-create",
             status_code=status.HTTP_201_CREATED, response_model=schemas.CollectionPointRead, responses=CONFLICT)
async def create_collection_point(body: schemas.CollectionPointCreate, principal: CatalogWrite, session: Session):
    return service.collection_point_read(*await service.create_collection_point(session, principal, body))


@router.get("/collection-points", tags=["collection-points"], operation_id="collection-points-list",
            response_model=list[schemas.CollectionPointRead])
async def list_collection_points(principal: CatalogRead, session: Session):
    return await service.list_collection_points(session, principal)


@router.get("/collection-points/{key}", tags=["collection-points"], operation_id="collection-points-get",
            response_model=schemas.CollectionPointRead, responses=NOT_FOUND)
async def get_collection_point(key: str, principal: CatalogRead, session: Session):
    point = await service.get_by_key(session, principal, CollectionPoint, key)
    return service.collection_point_read(point, await service.presented_purposes(session, point))


@router.patch("/collection-points/{key}", tags=["collection-points"], operation_id="collection-points-update",
              response_model=schemas.CollectionPointRead, responses=NOT_FOUND)
async def update_collection_point(
    key: str, body: schemas.CollectionPointUpdate, principal: CatalogWrite, session: Session
):
    return service.collection_point_read(*await service.update_collection_point(session, principal, key, body))


@router.delete("/collection-points/{key}", tags=["collection-points"], operation_id="collection-points-delete",
               status_code=status.HTTP_204_NO_CONTENT, responses={**NOT_FOUND, **CONFLICT})
async def delete_collection_point(key: str, principal: CatalogWrite, session: Session):
    await service.remove(session, await service.get_by_key(session, principal, CollectionPoint, key))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/collection-points/{key}/form", tags=["collection-points"], operation_id="collection-points-form",
            response_model=schemas.Form, responses={**NOT_FOUND, **CONFLICT})
async def get_form(
    key: str, principal: FormRead, session: Session,
    as_of: Annotated[UtcDatetime | None, Query(description="ISO 8601 instant with offset, not in the future: "
                                                           "exactly what the form showed then, from the "
                                                           "catalog's history")] = None,
):
    """What to show: every presented purpose with its disclosures, all unchecked, and the notice in force."""
    if as_of is None:
        return await service.form(session, principal, key)
    if as_of > service.now():
        raise InvalidRequest("as_of is in the future: the catalog's history tells what was shown, not what will be",
                             errors=[{"field": "query.as_of", "reason": "must not be in the future"}])
    return await history.form_at(session, principal, key, as_of)
