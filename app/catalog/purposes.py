"""Purposes: their legal basis and category (app/catalog/legal.py), disclosures and history."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.deps import Principal
from app.catalog import legal, schemas
from app.catalog.models import (
    CollectionPoint, CollectionPointPurpose, Purpose, PurposeBasisChange, PurposeDisclosure, Recipient,
)
from app.catalog.store import add, apply, get_by_key, now
from app.duties.models import PurposeWordingChange
from app.core.errors import Conflict, FieldError, InvalidRequest
from app.core.hashing import canonical_json, sha256_hex

SKEW = timedelta(minutes=5)
REQUIRED_IS_GONE = (
    "\"required\" consent is the pre-2023 model: processing necessary for the contract needs no consent "
    "(PIPA Art. 15(1)4) and asking for it may breach Decree Art. 17(1); declare legal_basis 'contract' (or "
    "another basis), or a consent category, and mark a condition of service only where the law allows it "
    f"({legal.CONDITION_ARTICLES})"
)


def disclosure_hash(disclosures: schemas.Disclosures) -> str:
    return sha256_hex(canonical_json(disclosures.model_dump(mode="json")))


def _legal_shape(body: schemas.PurposeCreate) -> tuple[str, str | None]:
    """(legal basis, category) the body declares, or 422 naming the field and the article."""
    category = body.category
    if isinstance(category, list):
        if len(set(category)) > 1:
            raise InvalidRequest("a purpose bundles two categories of consent; make one purpose per category", errors=[
                FieldError(field="body.category", reason=f"one of {sorted(set(category))}, not several: each is a "
                                                         "separate consent (PIPA Art. 22(1))")])
        category = category[0] if category else None
    if body.kind is not None:
        if body.kind == "required":
            raise InvalidRequest("a purpose can no longer be a \"required\" consent",
                                 errors=[FieldError(field="body.kind", reason=REQUIRED_IS_GONE)])
        if body.kind == "disclosed":
            if body.legal_basis == legal.CONSENT:
                raise InvalidRequest("kind 'disclosed' is a purpose processed without consent", errors=[FieldError(
                    field="body.legal_basis", reason="name the basis: contract, legal_obligation, ... (Art. 15(1))")])
        else:
            implied = legal.category_of_kind(body.kind)
            if category is not None and category != implied:
                raise InvalidRequest("kind and category disagree", errors=[FieldError(
                    field="body.kind", reason=f"kind {body.kind!r} is category {implied!r}; send category only")])
            category = implied
    if body.legal_basis == legal.CONSENT and category is None:
        raise InvalidRequest("a consent purpose names its category", errors=[FieldError(
            field="body.category", reason="required for legal_basis 'consent': consent is asked separately per "
                                          "category (PIPA Art. 22(1))")])
    if body.legal_basis != legal.CONSENT and category is not None:
        raise InvalidRequest("only consent purposes have a category", errors=[FieldError(
            field="body.category", reason=f"a purpose processed on {body.legal_basis!r} "
                                          f"({legal.LEGAL_BASES[body.legal_basis]}) is disclosed, not consented")])
    return body.legal_basis, category


async def _check_shape(session: AsyncSession, principal: Principal, *, legal_basis: str, category: str | None,
                       channel: str | None, recipient_key: str | None, disclosures: schemas.Disclosures,
                       advertises: list[str] | None = None) -> Recipient | None:
    errors: list[FieldError] = []
    consent = legal_basis == legal.CONSENT
    provision = category in ("third_party", "overseas_transfer")
    if channel is not None and category != "marketing":
        errors.append(FieldError(field="body.channel", reason="only marketing consents have a channel"))
    if advertises and category != "marketing":
        errors.append(FieldError(field="body.advertises", reason="only marketing consents advertise goods"))
    if consent and provision and recipient_key is None:
        errors.append(FieldError(field="body.recipient", reason=f"a {category} consent names its recipient "
                                                               "(PIPA Art. 17(2), 28-8(2))"))
    if consent and not provision and recipient_key is not None:
        errors.append(FieldError(field="body.recipient", reason="only third_party and overseas_transfer consents "
                                                                "(or a purpose without consent) have a recipient"))
    if consent:
        for lang, text in (("ko", disclosures.ko), ("en", disclosures.en)):
            for name in ("refusal_right", "refusal_consequence"):
                if text is not None and getattr(text, name) is None:
                    errors.append(FieldError(field=f"body.disclosures.{lang}.{name}",
                                             reason="a consent tells the right to refuse and what refusing costs "
                                                    "(PIPA Art. 15(2)4)"))
    if errors:
        raise InvalidRequest("the purpose's fields do not fit its legal basis and category", errors=errors)
    if recipient_key is None:
        return None
    recipient = await get_by_key(session, principal, Recipient, recipient_key)
    if category == "third_party" and recipient.country != "KR":
        raise InvalidRequest("providing to a recipient abroad is also an overseas transfer", errors=[FieldError(
            field="body.category", reason=f"recipient {recipient.key!r} is in {recipient.country}: declare category "
                                          "'overseas_transfer' (PIPA Art. 28-8), one consent, not two bundled")])
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
    legal_basis, category = _legal_shape(body)
    recipient = await _check_shape(
        session, principal, legal_basis=legal_basis, category=category, channel=body.channel,
        recipient_key=body.recipient, disclosures=body.disclosures, advertises=body.advertises,
    )
    purpose = await add(session, Purpose(
        id=uuid.uuid4(), tenant_id=principal.tenant, key=body.key, kind=legal.kind_of(legal_basis, category),
        legal_basis=legal_basis, category=category, channel=body.channel, advertises=body.advertises,
        recipient_id=recipient.id if recipient else None,
        disclosures=body.disclosures.model_dump(mode="json"), disclosure_hash=disclosure_hash(body.disclosures),
        retention=body.retention.model_dump(mode="json") if body.retention else None,
    ))
    await _snapshot(session, purpose)
    return purpose


async def _recipient_key(session: AsyncSession, purpose: Purpose) -> str | None:
    if purpose.recipient_id is None:
        return None
    return (await session.get(Recipient, purpose.recipient_id)).key


async def update_purpose(
    session: AsyncSession, principal: Principal, key: str, body: schemas.PurposeUpdate
) -> Purpose:
    purpose = await get_by_key(session, principal, Purpose, key)
    changes: dict[str, Any] = {}
    if (body.material or body.reconsent_from) and body.disclosures is None:
        raise InvalidRequest("material and reconsent_from describe a change of the disclosures", errors=[
            {"field": "body.disclosures", "reason": "give the new disclosures"}])
    if body.disclosures is not None:
        await _check_shape(
            session, principal, legal_basis=purpose.legal_basis, category=purpose.category, channel=purpose.channel,
            recipient_key=await _recipient_key(session, purpose), disclosures=body.disclosures,
        )
        changes["disclosures"] = body.disclosures.model_dump(mode="json")
        changes["disclosure_hash"] = disclosure_hash(body.disclosures)
        if changes["disclosure_hash"] != purpose.disclosure_hash:
            session.add(_wording_change(purpose, changes["disclosure_hash"], body, principal))
    if body.active is not None:
        changes["active"] = body.active
    if body.retention is not None:  # from now on: destruction duties already created keep their dates
        changes["retention"] = body.retention.model_dump(mode="json")
    apply(purpose, changes)
    await session.flush()
    await _snapshot(session, purpose)
    return purpose


def _wording_change(purpose: Purpose, after: str, body: schemas.PurposeUpdate,
                    principal: Principal) -> PurposeWordingChange:
    """The change, kept (append-only); a material one is applied from `reconsent_from` by the worker
    (app/duties/reconsent.py)."""
    current = now()
    effective = body.reconsent_from or current
    if effective < current - timedelta(minutes=5):
        raise InvalidRequest("reconsent_from is in the past", errors=[
            {"field": "body.reconsent_from", "reason": "now or later: consents given before it stay valid until then"}])
    return PurposeWordingChange(
        id=uuid.uuid4(), tenant_id=principal.tenant, purpose_id=purpose.id, purpose_key=purpose.key,
        disclosure_hash_before=purpose.disclosure_hash, disclosure_hash_after=after, material=bool(body.material),
        effective_from=max(effective, current), changed_by=principal.sub, reason=body.reason, created_at=current)


async def reclassify_purpose(session: AsyncSession, principal: Principal, key: str,
                             body: schemas.PurposeReclassify, *, changed_by: str | None = None) -> Purpose:
    """Move a purpose to another legal basis (or consent category) from now on, recorded in
    purpose_basis_changes with who and why. Events are never rewritten: those recorded before keep
    the action they had (granted / refused / withdrawn under consent, acknowledged otherwise)."""
    purpose = await get_by_key(session, principal, Purpose, key)
    at, effective_from = now(), body.effective_from
    if effective_from is not None and effective_from < at - SKEW:
        raise InvalidRequest("a reclassification takes effect from now or a later date, never before", errors=[
            FieldError(field="body.effective_from", reason="not in the past: events recorded before are never "
                                                           "reinterpreted")])
    later = effective_from is not None and effective_from > at
    category = body.category
    if body.legal_basis == legal.CONSENT and category is None:
        category = purpose.category or None
        if category is None:
            raise InvalidRequest("a consent purpose names its category", errors=[FieldError(
                field="body.category", reason="required when moving to consent (PIPA Art. 22(1))")])
    if body.legal_basis != legal.CONSENT and category is not None:
        raise InvalidRequest("only consent purposes have a category", errors=[FieldError(
            field="body.category", reason=f"{body.legal_basis!r} is not consent")])
    if (body.legal_basis, category) == (purpose.legal_basis, purpose.category) and purpose.kind != "required":
        raise Conflict(f"purpose {key!r} is already {body.legal_basis}"
                       + (f" ({category})" if category else ""))
    disclosures = schemas.Disclosures.model_validate(purpose.disclosures)
    await _check_shape(session, principal, legal_basis=body.legal_basis, category=category, channel=purpose.channel,
                       recipient_key=await _recipient_key(session, purpose), disclosures=disclosures,
                       advertises=purpose.advertises)
    if category not in legal.MAY_BE_CONDITION:
        points = list(await session.scalars(
            select(CollectionPoint.key).join(CollectionPointPurpose,
                                            CollectionPointPurpose.collection_point_id == CollectionPoint.id)
            .where(CollectionPointPurpose.purpose_id == purpose.id, CollectionPointPurpose.condition_of_service)))
        if points:
            raise Conflict(f"collection points {points} make {key!r} a condition of their service, which a "
                           f"{category or body.legal_basis} purpose may not be ({legal.CONDITION_ARTICLES}); "
                           "change them first", errors=[FieldError(field="body.legal_basis", reason="conflicts "
                                                                   "with a condition-of-service mark")])
    session.add(PurposeBasisChange(
        tenant_id=principal.tenant, purpose_id=purpose.id, legal_basis_before=purpose.legal_basis,
        category_before=purpose.category, legal_basis=body.legal_basis, category=category,
        effective_from=effective_from if later else at, changed_by=changed_by or principal.sub, reason=body.reason,
    ))
    if not later:  # a later date: the worker applies it then (app/catalog/scheduled.py)
        apply(purpose, {"legal_basis": body.legal_basis, "category": category,
                        "kind": legal.kind_of(body.legal_basis, category)})
    await session.flush()
    return purpose


async def basis_history(session: AsyncSession, principal: Principal, key: str) -> list[PurposeBasisChange]:
    purpose = await get_by_key(session, principal, Purpose, key)
    return list(await session.scalars(
        select(PurposeBasisChange).where(PurposeBasisChange.purpose_id == purpose.id)
        .order_by(PurposeBasisChange.effective_from, PurposeBasisChange.created_at)))


async def recipient_keys(session: AsyncSession, purposes: list[Purpose]) -> dict[uuid.UUID, Recipient]:
    ids = {p.recipient_id for p in purposes if p.recipient_id}
    if not ids:
        return {}
    return {r.id: r for r in await session.scalars(select(Recipient).where(Recipient.id.in_(ids)))}


def purpose_read(purpose: Purpose, recipients: dict[uuid.UUID, Recipient]) -> schemas.PurposeRead:
    recipient = recipients.get(purpose.recipient_id) if purpose.recipient_id else None
    return schemas.PurposeRead(
        id=purpose.id, key=purpose.key, kind=purpose.kind, legal_basis=purpose.legal_basis,
        legal_basis_article=legal.LEGAL_BASES[purpose.legal_basis], category=purpose.category,
        category_article=legal.CATEGORIES.get(purpose.category) if purpose.category else None,
        channel=purpose.channel, advertises=list(purpose.advertises or []), recipient=recipient.key if recipient else None,
        retention=purpose.retention,
        required=purpose.kind == "required",
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


