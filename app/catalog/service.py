"""Catalog rules: every lookup is scoped to the caller's tenant; invalid shapes fail loudly."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.deps import Principal
from app.catalog import schemas
from app.catalog.models import (
    CollectionPoint, CollectionPointPurpose, Notice, Processor, Purpose, PurposeDisclosure, Recipient,
)
from app.core.errors import Conflict, InvalidRequest, NotFound
from app.core.hashing import canonical_json, sha256_hex

T = TypeVar("T", Recipient, Processor, Purpose, CollectionPoint, Notice)
LABELS = {
    Recipient: "recipient", Processor: "processor", Purpose: "purpose",
    CollectionPoint: "collection point", Notice: "notice",
}


def now() -> datetime:
    return datetime.now(UTC)


async def get_by_key(session: AsyncSession, principal: Principal, model: type[T], key: str) -> T:
    row = await session.scalar(select(model).where(model.tenant_id == principal.tenant, model.key == key))
    if row is None:
        raise NotFound(f"no {LABELS[model]} with key {key!r}")
    return row


async def list_all(session: AsyncSession, principal: Principal, model: type[T]) -> list[T]:
    return list(await session.scalars(select(model).where(model.tenant_id == principal.tenant).order_by(model.key)))


async def add(session: AsyncSession, row: T, *, duplicate: Conflict | None = None) -> T:
    """Insert and flush, turning a duplicate key into a 409 (`duplicate`, or one about the key)."""
    try:
        async with session.begin_nested():
            session.add(row)
            await session.flush()
    except IntegrityError as exc:
        raise duplicate or Conflict(f"a {LABELS[type(row)]} with key {row.key!r} already exists",
                                    errors=[{"field": "body.key", "reason": "already exists"}]) from exc
    return row


async def remove(session: AsyncSession, row: T) -> None:
    try:
        async with session.begin_nested():
            await session.delete(row)
            await session.flush()
    except IntegrityError as exc:
        raise Conflict(f"the {LABELS[type(row)]} {row.key!r} is referenced by other records; "
                       "it stays for the history that points to it") from exc


def apply(row: Any, changes: dict[str, Any]) -> None:
    for name, value in changes.items():
        setattr(row, name, value)
    if hasattr(row, "updated_at"):
        row.updated_at = now()


# --- purposes -------------------------------------------------------------------------------


def disclosure_hash(disclosures: schemas.Disclosures) -> str:
    return sha256_hex(canonical_json(disclosures.model_dump(mode="json")))


async def _check_purpose_shape(
    session: AsyncSession, principal: Principal, *, kind: str, channel: str | None,
    recipient_key: str | None, disclosures: schemas.Disclosures,
) -> Recipient | None:
    errors = []
    if channel is not None and kind != "marketing":
        errors.append({"field": "body.channel", "reason": "only marketing purposes have a channel"})
    if kind == "third_party" and recipient_key is None:
        errors.append({"field": "body.recipient", "reason": "a third_party purpose must name its recipient"})
    if kind != "third_party" and recipient_key is not None:
        errors.append({"field": "body.recipient", "reason": "only third_party purposes have a recipient"})
    if errors:
        raise InvalidRequest("the purpose's kind does not fit its other fields", errors=errors)
    if recipient_key is None:
        return None
    recipient = await get_by_key(session, principal, Recipient, recipient_key)
    for lang, text, name in (("ko", disclosures.ko, recipient.name), ("en", disclosures.en, recipient.name_en)):
        if text is None:
            continue
        if text.recipient is None:
            text.recipient = name or recipient.name
        elif text.recipient != (name or recipient.name):
            raise InvalidRequest(
                "the disclosed recipient differs from the catalog's recipient",
                errors=[{"field": f"body.disclosures.{lang}.recipient",
                         "reason": f"must be {name or recipient.name!r}, the recipient's registered name"}],
            )
    return recipient


async def _snapshot(session: AsyncSession, purpose: Purpose) -> None:
    exists = await session.scalar(
        select(func.count()).select_from(PurposeDisclosure).where(
            PurposeDisclosure.purpose_id == purpose.id, PurposeDisclosure.hash == purpose.disclosure_hash
        )
    )
    if not exists:
        session.add(PurposeDisclosure(
            tenant_id=purpose.tenant_id, purpose_id=purpose.id, hash=purpose.disclosure_hash,
            content=purpose.disclosures,
        ))
        await session.flush()


async def create_purpose(session: AsyncSession, principal: Principal, body: schemas.PurposeCreate) -> Purpose:
    recipient = await _check_purpose_shape(
        session, principal, kind=body.kind, channel=body.channel, recipient_key=body.recipient,
        disclosures=body.disclosures,
    )
    purpose = await add(session, Purpose(
        id=uuid.uuid4(), tenant_id=principal.tenant, key=body.key, kind=body.kind, channel=body.channel,
        recipient_id=recipient.id if recipient else None,
        disclosures=body.disclosures.model_dump(mode="json"), disclosure_hash=disclosure_hash(body.disclosures),
    ))
    await _snapshot(session, purpose)
    return purpose


async def update_purpose(
    session: AsyncSession, principal: Principal, key: str, body: schemas.PurposeUpdate
) -> Purpose:
    purpose = await get_by_key(session, principal, Purpose, key)
    changes: dict[str, Any] = {}
    if body.disclosures is not None:
        recipient_key = None
        if purpose.recipient_id is not None:
            recipient_key = (await session.get(Recipient, purpose.recipient_id)).key
        await _check_purpose_shape(
            session, principal, kind=purpose.kind, channel=purpose.channel, recipient_key=recipient_key,
            disclosures=body.disclosures,
        )
        changes["disclosures"] = body.disclosures.model_dump(mode="json")
        changes["disclosure_hash"] = disclosure_hash(body.disclosures)
    if body.active is not None:
        changes["active"] = body.active
    apply(purpose, changes)
    await session.flush()
    await _snapshot(session, purpose)
    return purpose


async def recipient_keys(session: AsyncSession, purposes: list[Purpose]) -> dict[uuid.UUID, Recipient]:
    ids = {p.recipient_id for p in purposes if p.recipient_id}
    if not ids:
        return {}
    return {r.id: r for r in await session.scalars(select(Recipient).where(Recipient.id.in_(ids)))}


def purpose_read(purpose: Purpose, recipients: dict[uuid.UUID, Recipient]) -> schemas.PurposeRead:
    recipient = recipients.get(purpose.recipient_id) if purpose.recipient_id else None
    return schemas.PurposeRead(
        id=purpose.id, key=purpose.key, kind=purpose.kind, channel=purpose.channel,
        recipient=recipient.key if recipient else None, required=purpose.kind == "required",
        disclosures=schemas.Disclosures.model_validate(purpose.disclosures),
        disclosure_hash=purpose.disclosure_hash, active=purpose.active,
        created_at=purpose.created_at, updated_at=purpose.updated_at,
    )


async def update_recipient(
    session: AsyncSession, principal: Principal, key: str, body: schemas.RecipientUpdate
) -> Recipient:
    """A renamed recipient is renamed in every purpose that discloses it, so forms never show one
    name in the catalog and another in the consent wording (each purpose gets a new hash; past
    events keep the hash of the wording they were given on)."""
    recipient = await get_by_key(session, principal, Recipient, key)
    apply(recipient, body.changes())
    await session.flush()
    purposes = await session.scalars(
        select(Purpose).where(Purpose.tenant_id == principal.tenant, Purpose.recipient_id == recipient.id)
    )
    for purpose in purposes:
        disclosures = schemas.Disclosures.model_validate(purpose.disclosures)
        disclosures.ko.recipient = recipient.name
        if disclosures.en is not None:
            disclosures.en.recipient = recipient.name_en or recipient.name
        if disclosures.model_dump(mode="json") != purpose.disclosures:
            apply(purpose, {"disclosures": disclosures.model_dump(mode="json"),
                            "disclosure_hash": disclosure_hash(disclosures)})
            await session.flush()
            await _snapshot(session, purpose)
    return recipient


# --- notices ----------------------------------------------------------------------------------


async def get_notice(session: AsyncSession, principal: Principal, notice_id: uuid.UUID) -> Notice:
    notice = await session.scalar(
        select(Notice).where(Notice.tenant_id == principal.tenant, Notice.id == notice_id)
    )
    if notice is None:
        raise NotFound(f"no notice with id {notice_id}")
    return notice


async def create_notice(session: AsyncSession, principal: Principal, body: schemas.NoticeCreate) -> Notice:
    notice = Notice(
        id=uuid.uuid4(), tenant_id=principal.tenant, key=body.key, version=body.version, title=body.title,
        language=body.language, body=body.body, sha256=sha256_hex(body.body), effective_at=body.effective_at,
        published_at=now() if body.publish else None,
    )
    return await add(session, notice, duplicate=Conflict(
        f"notice {body.key!r} already has a version {body.version!r}",
        errors=[{"field": "body.version", "reason": "already exists for this key"}],
    ))


def _ensure_draft(notice: Notice) -> None:
    if notice.published_at is not None:
        raise Conflict(f"notice {notice.key!r} version {notice.version!r} is published and can no longer change; "
                       "publish a new version instead")


async def update_notice(
    session: AsyncSession, principal: Principal, notice_id: uuid.UUID, body: schemas.NoticeUpdate
) -> Notice:
    notice = await get_notice(session, principal, notice_id)
    _ensure_draft(notice)
    changes = body.changes()
    if "body" in changes:
        changes["sha256"] = sha256_hex(changes["body"])
    apply(notice, changes)
    await session.flush()
    return notice


async def publish_notice(session: AsyncSession, principal: Principal, notice_id: uuid.UUID) -> Notice:
    notice = await get_notice(session, principal, notice_id)
    _ensure_draft(notice)
    notice.published_at = now()
    await session.flush()
    return notice


async def delete_notice(session: AsyncSession, principal: Principal, notice_id: uuid.UUID) -> None:
    notice = await get_notice(session, principal, notice_id)
    _ensure_draft(notice)
    await session.delete(notice)
    await session.flush()


async def current_notice(session: AsyncSession, tenant: str, key: str, at: datetime | None = None) -> Notice | None:
    """The published version in force at `at`: the latest effective one."""
    return await session.scalar(
        select(Notice)
        .where(Notice.tenant_id == tenant, Notice.key == key, Notice.published_at.is_not(None),
               Notice.effective_at <= (at or now()))
        .order_by(Notice.effective_at.desc(), Notice.published_at.desc())
        .limit(1)
    )


# --- collection points ------------------------------------------------------------------------


async def _resolve_purposes(session: AsyncSession, principal: Principal, keys: list[str]) -> list[Purpose]:
    if len(set(keys)) != len(keys):
        raise InvalidRequest("a purpose is listed twice",
                             errors=[{"field": "body.purposes", "reason": "purpose keys must be unique"}])
    rows = {p.key: p for p in await session.scalars(
        select(Purpose).where(Purpose.tenant_id == principal.tenant, Purpose.key.in_(keys))
    )}
    missing = [k for k in keys if k not in rows]
    if missing:
        raise InvalidRequest("unknown purposes", errors=[
            {"field": f"body.purposes[{keys.index(k)}]", "reason": f"no purpose with key {k!r}"} for k in missing
        ])
    inactive = [k for k in keys if not rows[k].active]
    if inactive:
        raise InvalidRequest("inactive purposes cannot be presented", errors=[
            {"field": f"body.purposes[{keys.index(k)}]", "reason": "purpose is inactive"} for k in inactive
        ])
    return [rows[k] for k in keys]


async def _set_purposes(session: AsyncSession, point: CollectionPoint, purposes: list[Purpose]) -> None:
    await session.execute(
        delete(CollectionPointPurpose).where(CollectionPointPurpose.collection_point_id == point.id)
    )
    session.add_all([
        CollectionPointPurpose(collection_point_id=point.id, purpose_id=p.id, position=i)
        for i, p in enumerate(purposes)
    ])
    await session.flush()


async def presented_purposes(session: AsyncSession, point: CollectionPoint) -> list[Purpose]:
    return list(await session.scalars(
        select(Purpose)
        .join(CollectionPointPurpose, CollectionPointPurpose.purpose_id == Purpose.id)
        .where(CollectionPointPurpose.collection_point_id == point.id, Purpose.active)
        .order_by(CollectionPointPurpose.position)
    ))


async def create_collection_point(
    session: AsyncSession, principal: Principal, body: schemas.CollectionPointCreate
) -> tuple[CollectionPoint, list[Purpose]]:
    purposes = await _resolve_purposes(session, principal, body.purposes)
    point = await add(session, CollectionPoint(
        id=uuid.uuid4(), tenant_id=principal.tenant, key=body.key, name=body.name, kind=body.kind,
        notice_key=body.notice_key,
    ))
    await _set_purposes(session, point, purposes)
    return point, purposes


async def update_collection_point(
    session: AsyncSession, principal: Principal, key: str, body: schemas.CollectionPointUpdate
) -> tuple[CollectionPoint, list[Purpose]]:
    point = await get_by_key(session, principal, CollectionPoint, key)
    if body.purposes is not None:
        await _set_purposes(session, point, await _resolve_purposes(session, principal, body.purposes))
    apply(point, {k: v for k, v in body.changes().items() if k != "purposes"})
    await session.flush()
    return point, await presented_purposes(session, point)


async def list_collection_points(session: AsyncSession, principal: Principal) -> list[schemas.CollectionPointRead]:
    """Every collection point with its presented purpose keys, in two queries rather than one per point."""
    points = await list_all(session, principal, CollectionPoint)
    rows = await session.execute(
        select(CollectionPointPurpose.collection_point_id, Purpose)
        .join(Purpose, Purpose.id == CollectionPointPurpose.purpose_id)
        .where(Purpose.tenant_id == principal.tenant, Purpose.active)
        .order_by(CollectionPointPurpose.position)
    )
    presented: dict[uuid.UUID, list[Purpose]] = {p.id: [] for p in points}
    for point_id, purpose in rows:
        presented.setdefault(point_id, []).append(purpose)
    return [collection_point_read(p, presented[p.id]) for p in points]


def collection_point_read(point: CollectionPoint, purposes: list[Purpose]) -> schemas.CollectionPointRead:
    return schemas.CollectionPointRead(
        id=point.id, key=point.key, name=point.name, kind=point.kind, notice_key=point.notice_key,
        purposes=[p.key for p in purposes], created_at=point.created_at, updated_at=point.updated_at,
    )


async def form(session: AsyncSession, principal: Principal, key: str) -> schemas.Form:
    point = await get_by_key(session, principal, CollectionPoint, key)
    notice = await current_notice(session, principal.tenant, point.notice_key)
    if notice is None:
        raise Conflict(f"collection point {key!r} has no published notice {point.notice_key!r} in force; "
                       "publish one before asking for consent")
    purposes = await presented_purposes(session, point)
    recipients = await recipient_keys(session, purposes)
    return schemas.Form(
        collection_point=point.key, name=point.name, kind=point.kind,
        notice=schemas.FormNotice(
            id=notice.id, key=notice.key, version=notice.version, title=notice.title, sha256=notice.sha256,
            effective_at=notice.effective_at,
        ),
        purposes=[
            schemas.FormPurpose(
                key=p.key, kind=p.kind, channel=p.channel, required=p.kind == "required",
                recipient=_form_recipient(recipients.get(p.recipient_id)) if p.recipient_id else None,
                disclosures=schemas.Disclosures.model_validate(p.disclosures), disclosure_hash=p.disclosure_hash,
            )
            for p in purposes
        ],
    )


def _form_recipient(recipient: Recipient | None) -> schemas.FormRecipient | None:
    if recipient is None:
        return None
    return schemas.FormRecipient(key=recipient.key, name=recipient.name, name_en=recipient.name_en,
                                 country=recipient.country)
