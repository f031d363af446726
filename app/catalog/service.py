"""Catalog rules: every lookup is scoped to the caller's tenant; invalid shapes fail loudly."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from pydantic import ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.deps import Principal
from app.catalog import legal, schemas
from app.catalog.purposes import recipient_keys
from app.catalog.models import (
    CollectionPoint, CollectionPointPurpose, Notice, Purpose, Recipient,
)
from app.core.errors import Conflict, InvalidRequest, NotFound
from app.core.hashing import sha256_hex

from app.catalog.store import LABELS, T, add, apply, get_by_key, list_all, now, remove  # noqa: F401 (re-exported)


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
        published_at=now() if body.publish else None, impact=body.impact,
    )
    if body.publish:
        await _check_lead(session, principal, notice, body.force_reason)
    elif body.force_reason is not None:
        raise InvalidRequest("force_reason is for publishing", errors=[
            {"field": "body.force_reason", "reason": "only with publish: true (or on POST .../publish)"}])
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


LEAD = {"minor": timedelta(days=7), "unfavourable": timedelta(days=30), "material": timedelta(days=30)}


async def _check_lead(session: AsyncSession, principal: Principal, notice: Notice, force_reason: str | None) -> None:
    """A change of a published notice is announced ahead: 7 days, 30 for an unfavourable or material
    one (e-commerce standard terms Art. 3(4); PIPA Art. 15(2), 17(2)); earlier only when forced,
    with the reason and who kept on the notice."""
    earlier = await session.scalar(select(func.count()).select_from(Notice).where(
        Notice.tenant_id == principal.tenant, Notice.key == notice.key, Notice.published_at.is_not(None),
        Notice.id != notice.id, Notice.effective_at <= notice.effective_at))  # a version this one replaces
    lead = LEAD[notice.impact]
    published = now()
    if earlier and notice.effective_at < published + lead and force_reason is None:
        raise InvalidRequest(
            f"a {notice.impact} change of notice {notice.key!r} takes effect at least {lead.days} days after it is "
            "published; give force_reason to publish it anyway", errors=[{
                "field": "body.effective_at",
                "reason": f"at least {lead.days} days after publication (e-commerce standard terms Art. 3(4)): "
                          f"{(published + lead).isoformat()} or later"}])
    if force_reason is not None:
        notice.forced_reason, notice.forced_by = force_reason, principal.sub


async def publish_notice(session: AsyncSession, principal: Principal, notice_id: uuid.UUID,
                         force_reason: str | None = None) -> Notice:
    notice = await get_notice(session, principal, notice_id)
    _ensure_draft(notice)
    await _check_lead(session, principal, notice, force_reason)
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

Presented = tuple[Purpose, bool]  # a purpose as a collection point presents it: (purpose, condition of service)


async def _resolve_purposes(session: AsyncSession, principal: Principal,
                            listed: list[str | schemas.Presented]) -> list[Presented]:
    items = [item if isinstance(item, schemas.Presented) else schemas.Presented(key=item) for item in listed]
    keys = [item.key for item in items]
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
    refused = [(i, rows[item.key]) for i, item in enumerate(items)
               if item.condition_of_service and rows[item.key].category not in legal.MAY_BE_CONDITION]
    if refused:
        raise InvalidRequest(
            "a service may make consent its condition only for third-party provision, sensitive data, unique "
            f"identifiers and overseas transfer ({legal.CONDITION_ARTICLES})",
            errors=[{"field": f"body.purposes[{i}].condition_of_service",
                     "reason": f"{p.key!r} is {p.category or p.legal_basis}: refusing it must cost the person nothing "
                               f"({legal.CONDITION_ARTICLES})"} for i, p in refused])
    return [(rows[item.key], item.condition_of_service) for item in items]


async def _set_purposes(session: AsyncSession, point: CollectionPoint, presented: list[Presented]) -> None:
    await session.execute(
        delete(CollectionPointPurpose).where(CollectionPointPurpose.collection_point_id == point.id)
    )
    session.add_all([
        CollectionPointPurpose(collection_point_id=point.id, purpose_id=p.id, position=i, condition_of_service=c)
        for i, (p, c) in enumerate(presented)
    ])
    await session.flush()


async def presented_purposes(session: AsyncSession, point: CollectionPoint) -> list[Presented]:
    return [(p, c) for p, c in await session.execute(
        select(Purpose, CollectionPointPurpose.condition_of_service)
        .join(CollectionPointPurpose, CollectionPointPurpose.purpose_id == Purpose.id)
        .where(CollectionPointPurpose.collection_point_id == point.id, Purpose.active)
        .order_by(CollectionPointPurpose.position)
    )]


async def create_collection_point(
    session: AsyncSession, principal: Principal, body: schemas.CollectionPointCreate
) -> tuple[CollectionPoint, list[Presented]]:
    presented = await _resolve_purposes(session, principal, body.purposes)
    point = await add(session, CollectionPoint(
        id=uuid.uuid4(), tenant_id=principal.tenant, key=body.key, name=body.name, kind=body.kind,
        notice_key=body.notice_key, for_children=body.for_children,
    ))
    await _set_purposes(session, point, presented)
    return point, presented


async def update_collection_point(
    session: AsyncSession, principal: Principal, key: str, body: schemas.CollectionPointUpdate
) -> tuple[CollectionPoint, list[Presented]]:
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
        select(CollectionPointPurpose.collection_point_id, Purpose, CollectionPointPurpose.condition_of_service)
        .join(Purpose, Purpose.id == CollectionPointPurpose.purpose_id)
        .where(Purpose.tenant_id == principal.tenant, Purpose.active)
        .order_by(CollectionPointPurpose.position)
    )
    presented: dict[uuid.UUID, list[Presented]] = {p.id: [] for p in points}
    for point_id, purpose, condition in rows:
        presented.setdefault(point_id, []).append((purpose, condition))
    return [collection_point_read(p, presented[p.id]) for p in points]


def collection_point_read(point: CollectionPoint, presented: list[Presented]) -> schemas.CollectionPointRead:
    return schemas.CollectionPointRead(
        id=point.id, key=point.key, name=point.name, kind=point.kind, notice_key=point.notice_key,
        purposes=[p.key for p, _ in presented], conditions=[p.key for p, c in presented if c],
        for_children=point.for_children, created_at=point.created_at, updated_at=point.updated_at,
    )


def _required(purpose: Purpose, condition: bool) -> bool:
    """Refusing it fails the request: a condition of this service, or a pre-2023 "required" purpose."""
    return condition or purpose.kind == "required"


async def form(session: AsyncSession, principal: Principal, key: str) -> schemas.Form:
    """What the form shows now (the form at a past time: app/catalog/history.py)."""
    point = await get_by_key(session, principal, CollectionPoint, key)
    notice = await current_notice(session, principal.tenant, point.notice_key)
    if notice is None:
        raise Conflict(f"collection point {key!r} has no published notice {point.notice_key!r} in force; "
                       "publish one before asking for consent")
    presented = await presented_purposes(session, point)
    return build_form(point, notice, presented, await recipient_keys(session, [p for p, _ in presented]))


def build_form(point: CollectionPoint, notice: Notice, presented: list[Presented],
               recipients: dict[uuid.UUID, Recipient]) -> schemas.Form:
    """Purposes processed without consent first (shown, acknowledged, never a checkbox), then one
    section per consent category (PIPA Art. 22(1)), every box unchecked."""
    items = [
        schemas.FormPurpose(
            key=p.key, kind=p.kind, legal_basis=p.legal_basis, legal_basis_article=legal.LEGAL_BASES[p.legal_basis],
            category=p.category, section=legal.section_of(p.legal_basis, p.category), channel=p.channel,
            required=_required(p, c), checkbox=p.legal_basis == legal.CONSENT,
            recipient=_form_recipient(recipients.get(p.recipient_id)) if p.recipient_id else None,
            disclosures=_disclosures(p), disclosure_hash=p.disclosure_hash,
        )
        for p, c in presented
    ]
    sections = []
    for section in legal.SECTION_ORDER:
        keys = [item.key for item in items if item.section == section]
        if keys:
            title, title_en = legal.SECTION_TITLES[section]
            sections.append(schemas.FormSection(section=section, title=title, title_en=title_en,
                                                article=legal.CATEGORIES.get(section), purposes=keys))
    return schemas.Form(
        collection_point=point.key, name=point.name, kind=point.kind,
        notice=schemas.FormNotice(
            id=notice.id, key=notice.key, version=notice.version, title=notice.title, sha256=notice.sha256,
            effective_at=notice.effective_at,
        ),
        sections=sections, purposes=items,
    )


def _disclosures(purpose: Purpose) -> schemas.Disclosures:
    """The purpose's stored wording; a row changed behind the service's back into something no form
    can show is a 409 naming it, not a 500."""
    try:
        return schemas.Disclosures.model_validate(purpose.disclosures)
    except ValidationError as exc:
        raise Conflict(f"the stored disclosures of purpose {purpose.key!r} are not a wording the form can show "
                       "(changed outside the service: see GET /v1/audit/changes)",
                       errors=[{"field": f"purposes.{purpose.key}.disclosures", "reason": str(exc.errors()[0]["msg"])}],
                       ) from exc


def _form_recipient(recipient: Recipient | None) -> schemas.FormRecipient | None:
    if recipient is None:
        return None
    return schemas.FormRecipient(key=recipient.key, name=recipient.name, name_en=recipient.name_en,
                                 country=recipient.country)
