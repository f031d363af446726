"""Catalog tables: what a tenant asks consent for, where, on which wording, for whom."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (BigInteger, Boolean, CheckConstraint, false, text, Column, DateTime, ForeignKey, Identity,
                        Index, Text, UniqueConstraint)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlmodel import Field, SQLModel

from app.catalog.legal import CATEGORIES, LEGAL_BASES
from app.core.models import jsonb_object, sql_in, optional_timestamp, timestamp, uuid_pk

# The purpose's kind: its category's name for consent, "disclosed" without consent; "required" only
# on purposes recorded before the legal model (app/catalog/legal.py, alembic 0006).
PURPOSE_KINDS = (
    "required", "optional", "marketing", "third_party",
    "sensitive", "unique_identifier", "overseas_transfer", "beyond_purpose", "disclosed",
)
CHANNELS = ("sms", "email", "push", "kakao", "phone", "night")
COLLECTION_POINT_KINDS = ("signup", "preference_center", "event", "phone", "paper", "other")


class Tenant(SQLModel, table=True):
    """One controller. Tokens name it; the row carries what notices and webhooks show about it."""

    __tablename__ = "tenants"
    id: str = Field(sa_column=Column(Text, primary_key=True))
    name: str = Field(sa_column=Column(Text, nullable=False))
    name_en: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = timestamp()


class Recipient(SQLModel, table=True):
    """A third party (제3자) that receives personal data under its own responsibility."""

    __tablename__ = "recipients"
    __table_args__ = (UniqueConstraint("tenant_id", "key"),)
    id: uuid.UUID = uuid_pk()
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    key: str = Field(sa_column=Column(Text, nullable=False))
    name: str = Field(sa_column=Column(Text, nullable=False))
    name_en: str | None = Field(default=None, sa_column=Column(Text))
    country: str = Field(default="KR", sa_column=Column(Text, nullable=False, server_default="KR"))
    contact: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = timestamp()
    updated_at: datetime = timestamp()


class Processor(SQLModel, table=True):
    """An outsourced processor (수탁사): disclosed, not consented (PIPA Art. 26)."""

    __tablename__ = "processors"
    __table_args__ = (UniqueConstraint("tenant_id", "key"),)
    id: uuid.UUID = uuid_pk()
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    key: str = Field(sa_column=Column(Text, nullable=False))
    name: str = Field(sa_column=Column(Text, nullable=False))
    name_en: str | None = Field(default=None, sa_column=Column(Text))
    task: str = Field(sa_column=Column(Text, nullable=False))
    task_en: str | None = Field(default=None, sa_column=Column(Text))
    country: str = Field(default="KR", sa_column=Column(Text, nullable=False, server_default="KR"))
    created_at: datetime = timestamp()
    updated_at: datetime = timestamp()


class Purpose(SQLModel, table=True):
    """One consent item, with what must be disclosed when asking for it."""

    __tablename__ = "purposes"
    __table_args__ = (
        UniqueConstraint("tenant_id", "key"),
        CheckConstraint(sql_in("kind", PURPOSE_KINDS), name="kind"),
        CheckConstraint(f"channel IS NULL OR {sql_in('channel', CHANNELS)}", name="channel"),
        CheckConstraint("channel IS NULL OR kind = 'marketing'", name="channel_only_marketing"),
        CheckConstraint(sql_in("legal_basis", tuple(LEGAL_BASES)), name="legal_basis"),
        CheckConstraint(f"category IS NULL OR {sql_in('category', tuple(CATEGORIES))}", name="category"),
        CheckConstraint("(legal_basis = 'consent') = (category IS NOT NULL)", name="category_iff_consent"),
        CheckConstraint("CASE WHEN legal_basis <> 'consent' THEN true "
                        "WHEN category IN ('third_party', 'overseas_transfer') THEN recipient_id IS NOT NULL "
                        "ELSE recipient_id IS NULL END", name="recipient_iff_provision"),
    )
    id: uuid.UUID = uuid_pk()
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    key: str = Field(sa_column=Column(Text, nullable=False))
    kind: str = Field(sa_column=Column(Text, nullable=False))
    legal_basis: str = Field(default="consent", sa_column=Column(Text, nullable=False, server_default="consent"))
    category: str | None = Field(default=None, sa_column=Column(Text))
    # Marketing: the goods categories its wording advertises (empty: any); the permission check's
    # `category` and the 6-month existing-customer exception read it (Network Act Art. 50(1)1).
    advertises: list[str] = Field(default_factory=list, sa_column=Column(ARRAY(Text), nullable=False,
                                                                         server_default=text("'{}'::text[]")))
    channel: str | None = Field(default=None, sa_column=Column(Text))
    recipient_id: uuid.UUID | None = Field(
        default=None, sa_column=Column(UUID(as_uuid=True), ForeignKey("recipients.id"), nullable=True)
    )
    disclosures: dict[str, Any] = jsonb_object()
    # When its data is destroyed (PIPA Art. 21; app/catalog/schemas.py RetentionRule); None: the default
    retention: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))
    disclosure_hash: str = Field(sa_column=Column(Text, nullable=False))
    active: bool = Field(default=True)
    created_at: datetime = timestamp()
    updated_at: datetime = timestamp()


class PurposeBasisChange(SQLModel, table=True):
    """A purpose moved to another legal basis (catalog history, append-only): who, why, from when.
    Events recorded before stay what they were."""

    __tablename__ = "purpose_basis_changes"
    __table_args__ = (Index("ix_purpose_basis_changes_purpose", "purpose_id", "effective_from"),)
    id: uuid.UUID = uuid_pk()
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    purpose_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), ForeignKey("purposes.id"), nullable=False))
    legal_basis_before: str = Field(sa_column=Column(Text, nullable=False))
    category_before: str | None = Field(default=None, sa_column=Column(Text))
    legal_basis: str = Field(sa_column=Column(Text, nullable=False))
    category: str | None = Field(default=None, sa_column=Column(Text))
    effective_from: datetime = timestamp()
    changed_by: str = Field(sa_column=Column(Text, nullable=False))
    reason: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = timestamp()


class PurposeDisclosure(SQLModel, table=True):
    """Every wording a purpose ever had, by hash, so an event proves exactly what was shown."""

    __tablename__ = "purpose_disclosures"
    __table_args__ = (UniqueConstraint("purpose_id", "hash"),)
    id: uuid.UUID = uuid_pk()
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    purpose_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), ForeignKey("purposes.id"), nullable=False))
    hash: str = Field(sa_column=Column(Text, nullable=False))
    content: dict[str, Any] = jsonb_object()
    created_at: datetime = timestamp()


class Notice(SQLModel, table=True):
    """A privacy policy or consent text version; immutable once published."""

    __tablename__ = "notices"
    __table_args__ = (
        UniqueConstraint("tenant_id", "key", "version"),
        Index("ix_notices_current", "tenant_id", "key", "effective_at"),
    )
    id: uuid.UUID = uuid_pk()
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    key: str = Field(sa_column=Column(Text, nullable=False))
    version: str = Field(sa_column=Column(Text, nullable=False))
    title: str = Field(sa_column=Column(Text, nullable=False))
    language: str = Field(default="ko", sa_column=Column(Text, nullable=False, server_default="ko"))
    body: str = Field(sa_column=Column(Text, nullable=False))
    sha256: str = Field(sa_column=Column(Text, nullable=False))
    effective_at: datetime = timestamp()
    published_at: datetime | None = optional_timestamp()
    # What the change does to the people it applies to: unfavourable or material changes are announced
    # 30 days ahead, others 7 (e-commerce standard terms Art. 3(4)); forced earlier only with a reason
    impact: str = Field(default="minor", sa_column=Column(Text, nullable=False, server_default="minor"))
    forced_reason: str | None = Field(default=None, sa_column=Column(Text))
    forced_by: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = timestamp()


class CollectionPoint(SQLModel, table=True):
    """Where consent is asked; presents an ordered list of purposes under one notice."""

    __tablename__ = "collection_points"
    __table_args__ = (
        UniqueConstraint("tenant_id", "key"),
        CheckConstraint(sql_in("kind", COLLECTION_POINT_KINDS), name="kind"),
    )
    id: uuid.UUID = uuid_pk()
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    key: str = Field(sa_column=Column(Text, nullable=False))
    name: str = Field(sa_column=Column(Text, nullable=False))
    kind: str = Field(sa_column=Column(Text, nullable=False))
    notice_key: str = Field(sa_column=Column(Text, nullable=False))
    # A form for children: a decision there for a subject declared under 14 is the guardian's (PIPA Art. 22-2)
    for_children: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=text("false")))
    created_at: datetime = timestamp()
    updated_at: datetime = timestamp()


class CollectionPointPurpose(SQLModel, table=True):
    __tablename__ = "collection_point_purposes"
    collection_point_id: uuid.UUID = Field(
        sa_column=Column(
            UUID(as_uuid=True), ForeignKey("collection_points.id", ondelete="CASCADE"), primary_key=True
        )
    )
    purpose_id: uuid.UUID = Field(
        sa_column=Column(UUID(as_uuid=True), ForeignKey("purposes.id"), primary_key=True)
    )
    position: int = Field(default=0)
    # Refusing this purpose here fails the request: only in the categories where the law lets a
    # service need consent (app/catalog/legal.py MAY_BE_CONDITION; PIPA Art. 16(3), 22(5)).
    condition_of_service: bool = Field(default=False, sa_column=Column(Boolean, nullable=False,
                                                                       server_default=false()))


class CatalogChange(SQLModel, table=True):
    """One change to the catalog, a notice, a webhook endpoint or a tenant's settings, written by the
    tables' own trigger (alembic 0009; append-only): the row before and after, who, when. The form
    as it was at a past time is read back from it (app/catalog/history.py)."""

    __tablename__ = "catalog_changes"
    __table_args__ = (
        CheckConstraint("op IN ('baseline', 'insert', 'update', 'delete')", name="op"),
        Index("ix_catalog_changes_tenant_changed", "tenant_id", "changed_at", "id"),
        Index("ix_catalog_changes_entity", "entity", "entity_id", "changed_at", "id"),
        Index("ix_catalog_changes_key", "tenant_id", "entity", "key", "changed_at"),
    )
    id: int = Field(sa_column=Column(BigInteger, Identity(always=True), primary_key=True))
    tenant_id: str | None = Field(default=None, sa_column=Column(Text))
    entity: str = Field(sa_column=Column(Text, nullable=False))  # the table
    entity_id: str = Field(sa_column=Column(Text, nullable=False))  # the row's identity in it
    key: str | None = Field(default=None, sa_column=Column(Text))
    op: str = Field(sa_column=Column(Text, nullable=False))
    before: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    after: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    changed_by: str = Field(sa_column=Column(Text, nullable=False))
    db_role: str = Field(sa_column=Column(Text, nullable=False))
    changed_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))  # the statement's time
    transaction_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))  # its start
