"""Ledger tables: subjects (chain heads), append-only events, current state, idempotency."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger, CheckConstraint, Column, DateTime, ForeignKey, Index, Integer, SmallInteger, Text, UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlmodel import Field, SQLModel

from app.core.models import jsonb_object, optional_timestamp, sql_in, timestamp, uuid_pk

# "acknowledged": the person was shown a purpose processed without consent (legal basis other
# than consent; app/catalog/legal.py); "agree_all": a form's "agree to all", one act per item.
ACTIONS = ("granted", "refused", "withdrawn", "reconfirmed", "expired", "revoked", "acknowledged")
STATUSES = ("granted", "refused", "withdrawn", "expired", "revoked", "acknowledged")
METHODS = ("web", "app", "phone", "paper", "email", "api", "agree_all")
ACTOR_TYPES = ("subject", "guardian", "operator")


class SubjectTransaction(SQLModel, table=True):
    """A transaction relationship (Network Act Art. 50(1)1): the goods category and when; no
    personal data beyond the member id. Append-only."""

    __tablename__ = "subject_transactions"
    __table_args__ = (Index("ix_subject_transactions_subject", "subject_id", "goods_category", "transacted_at"),)
    id: uuid.UUID = uuid_pk()
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    subject_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), ForeignKey("subjects.id"), nullable=False))
    goods_category: str = Field(sa_column=Column(Text, nullable=False))
    transacted_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    recorded_by: str = Field(sa_column=Column(Text, nullable=False))
    recorded_at: datetime = timestamp()


class Subject(SQLModel, table=True):
    """The person, by the tenant's opaque id. The row is the lock and head of their hash chain."""

    __tablename__ = "subjects"
    __table_args__ = (UniqueConstraint("tenant_id", "external_id"),)
    id: uuid.UUID = uuid_pk()
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    external_id: str = Field(sa_column=Column(Text, nullable=False))
    last_seq: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    last_hash: str | None = Field(default=None, sa_column=Column(Text))
    last_recorded_at: datetime | None = optional_timestamp()
    created_at: datetime = timestamp()


class ConsentEvidence(SQLModel, table=True):
    """What the server saw of the person's act (IP, user agent, guardian verification): personal
    data with a retention, so outside the chain, which commits to it by a keyed hash. Purged rows
    keep the commitment (docs/proof.md)."""

    __tablename__ = "consent_evidence"
    __table_args__ = (
        Index("ix_consent_evidence_subject", "subject_id"),
        Index("ix_consent_evidence_created", "created_at", postgresql_using="brin"),
    )
    id: uuid.UUID = uuid_pk()
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    subject_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), ForeignKey("subjects.id"), nullable=False))
    ip: str | None = Field(default=None, sa_column=Column(Text))
    user_agent: str | None = Field(default=None, sa_column=Column(Text))
    guardian: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    commitment: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = timestamp()
    purged_at: datetime | None = optional_timestamp()


class ConsentEvent(SQLModel, table=True):
    """One decision, append-only; the database refuses UPDATE and DELETE (see the migrations).

    Chain version 2 rows carry the keys their document prints (docs/proof.md); `ip`,
    `user_agent` and `guardian` are only ever set on version 1 rows.
    """

    __tablename__ = "consent_events"
    __table_args__ = (
        UniqueConstraint("subject_id", "seq"),
        Index("ix_consent_events_subject_purpose_seq", "subject_id", "purpose_id", "seq"),
        # the auditors' tenant-wide search and export by recorded time (app/audit/), keyset on (recorded_at, id)
        Index("ix_consent_events_tenant_recorded_id", "tenant_id", "recorded_at", "id"),
        CheckConstraint(sql_in("action", ACTIONS), name="action"),
        CheckConstraint(sql_in("status", STATUSES), name="status"),
        CheckConstraint(sql_in("method", METHODS), name="method"),
        CheckConstraint(sql_in("actor_type", ACTOR_TYPES), name="actor_type"),
        CheckConstraint("actor_type <> 'guardian' OR guardian IS NOT NULL OR evidence_id IS NOT NULL",
                        name="guardian_evidence"),
        CheckConstraint("chain_version IN (1, 2)", name="chain_version"),
    )
    id: uuid.UUID = uuid_pk()
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    subject_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), ForeignKey("subjects.id"), nullable=False))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    purpose_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), ForeignKey("purposes.id"), nullable=False))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    action: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(sa_column=Column(Text, nullable=False))
    previous_status: str | None = Field(default=None, sa_column=Column(Text))
    collection_point_id: uuid.UUID | None = Field(
        default=None, sa_column=Column(UUID(as_uuid=True), ForeignKey("collection_points.id"))
    )
    notice_id: uuid.UUID | None = Field(default=None, sa_column=Column(UUID(as_uuid=True), ForeignKey("notices.id")))
    disclosure_hash: str | None = Field(default=None, sa_column=Column(Text))
    method: str = Field(sa_column=Column(Text, nullable=False))
    actor_type: str = Field(sa_column=Column(Text, nullable=False))
    actor_ref: str | None = Field(default=None, sa_column=Column(Text))
    guardian: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    ip: str | None = Field(default=None, sa_column=Column(Text))
    user_agent: str | None = Field(default=None, sa_column=Column(Text))
    occurred_at: datetime = timestamp()
    recorded_at: datetime = timestamp()
    request_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), nullable=False))
    reason: str | None = Field(default=None, sa_column=Column(Text))
    prev_hash: str | None = Field(default=None, sa_column=Column(Text))
    hash: str = Field(sa_column=Column(Text, nullable=False))
    chain_version: int = Field(default=2, sa_column=Column(SmallInteger, nullable=False, server_default="1"))
    purpose_key: str = Field(sa_column=Column(Text, nullable=False))
    collection_point_key: str | None = Field(default=None, sa_column=Column(Text))
    notice_key: str | None = Field(default=None, sa_column=Column(Text))
    notice_version: str | None = Field(default=None, sa_column=Column(Text))
    notice_sha256: str | None = Field(default=None, sa_column=Column(Text))
    notice_superseded_at: datetime | None = optional_timestamp()
    evidence_id: uuid.UUID | None = Field(
        default=None, sa_column=Column(UUID(as_uuid=True), ForeignKey("consent_evidence.id"))
    )
    evidence_commitment: str | None = Field(default=None, sa_column=Column(Text))
    seal: str | None = Field(default=None, sa_column=Column(Text))


class ConsentState(SQLModel, table=True):
    """Current status per (subject, purpose), written in the same transaction as its event."""

    __tablename__ = "consent_states"
    __table_args__ = (CheckConstraint(sql_in("status", STATUSES), name="status"),)
    subject_id: uuid.UUID = Field(
        sa_column=Column(UUID(as_uuid=True), ForeignKey("subjects.id"), primary_key=True)
    )
    purpose_id: uuid.UUID = Field(
        sa_column=Column(UUID(as_uuid=True), ForeignKey("purposes.id"), primary_key=True)
    )
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(sa_column=Column(Text, nullable=False))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    since: datetime = timestamp()
    last_event_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), nullable=False))
    notice_id: uuid.UUID | None = Field(default=None, sa_column=Column(UUID(as_uuid=True)))
    collection_point_id: uuid.UUID | None = Field(default=None, sa_column=Column(UUID(as_uuid=True)))


class IdempotencyKey(SQLModel, table=True):
    """First result of a keyed request, stored in the request's own transaction."""

    __tablename__ = "idempotency_keys"
    # The purge finds expired keys by block range: a brin index costs next to nothing per insert.
    __table_args__ = (Index("ix_idempotency_keys_created", "created_at", postgresql_using="brin"),)
    tenant_id: str = Field(sa_column=Column(Text, primary_key=True))
    key: str = Field(sa_column=Column(Text, primary_key=True))
    request_hash: str = Field(sa_column=Column(Text, nullable=False))
    status_code: int | None = Field(default=None, sa_column=Column(Integer))
    response: dict[str, Any] = jsonb_object()
    created_at: datetime = timestamp()


class Receipt(SQLModel, table=True):
    """The signed receipt (compact JWS) handed out for one recording or withdrawal."""

    __tablename__ = "receipts"
    __table_args__ = (Index("ix_receipts_subject", "subject_id"),)
    id: uuid.UUID = uuid_pk()
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    subject_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), ForeignKey("subjects.id"), nullable=False))
    request_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), nullable=False))
    event_ids: list[uuid.UUID] = Field(sa_column=Column(ARRAY(UUID(as_uuid=True)), nullable=False))
    jws: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = timestamp()


class EvidencePurge(SQLModel, table=True):
    """One `evidence purge` pass: raw evidence recorded before `before` destroyed, by whom."""

    __tablename__ = "evidence_purges"
    id: uuid.UUID = uuid_pk()
    before: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    purged_count: int = Field(sa_column=Column(BigInteger, nullable=False))
    purged_by: str = Field(sa_column=Column(Text, nullable=False))
    purged_at: datetime = timestamp()
