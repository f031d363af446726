"""Duty tables (docs/duties.md).

`duty_records` is the evidence: append-only, each duty's records hash-chained (the first one links
to the hash of the event that caused it), sealed, and in the tenant's Merkle log like events.
`duties` is the current state of each duty, moved only by the records' trigger (alembic 0007), as
consent_states is by the events'. No foreign key to subjects: a record's insert would then wait
for a subject a consent write holds, while that write waits for the duty (docs/duties.md, locks).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, Column, DateTime, Index, Integer, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlmodel import Field, SQLModel

from app.core.models import optional_timestamp, sql_in, timestamp

# ad_result_notice: Network Act Art. 50(7); reconfirmation: 50(8); suppression: PIPA Art. 37 with
# each processor; destruction: PIPA Art. 21; ask_at_14: PIPA Art. 22-2 (the child turns 14);
# reconsent: PIPA Art. 15(2), 17(2) (the wording consented to changed materially).
KINDS = ("ad_result_notice", "reconfirmation", "suppression", "destruction", "ask_at_14", "reconsent")
STATUSES = ("due", "sent", "done", "overdue", "cancelled")
ACTIONS = ("created", "notified", "overdue", "sent", "done", "cancelled")
OPEN = ("due", "overdue")  # not yet met
RECORD_VERSION = 1
DEFAULT_LEAD_DAYS = 30  # a reconfirmation comes due this long before its deadline, unless the tenant says


class PurposeWordingChange(SQLModel, table=True):
    """A change of a purpose's disclosures (append-only). A material one makes the consents given on
    the wording before it need fresh consent from `effective_from` (PIPA Art. 15(2), 17(2))."""

    __tablename__ = "purpose_wording_changes"
    __table_args__ = (Index("ix_purpose_wording_changes_purpose", "purpose_id", "created_at"),)
    id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), primary_key=True))
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    purpose_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), nullable=False))
    purpose_key: str = Field(sa_column=Column(Text, nullable=False))
    disclosure_hash_before: str = Field(sa_column=Column(Text, nullable=False))
    disclosure_hash_after: str = Field(sa_column=Column(Text, nullable=False))
    material: bool = Field(sa_column=Column(Boolean, nullable=False))
    effective_from: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    changed_by: str = Field(sa_column=Column(Text, nullable=False))
    reason: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class ReconsentRun(SQLModel, table=True):
    """The scheduler's progress through the subjects a material change affects (keyset on subject)."""

    __tablename__ = "reconsent_runs"
    change_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), primary_key=True))
    last_subject: uuid.UUID | None = Field(default=None, sa_column=Column(UUID(as_uuid=True)))
    subjects: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    finished_at: datetime | None = optional_timestamp()


class TenantSettings(SQLModel, table=True):
    """A tenant's choices where the law leaves one (absent row: the defaults)."""

    __tablename__ = "tenant_settings"
    __table_args__ = (
        CheckConstraint("reconfirmation_lead_days BETWEEN 0 AND 365", name="lead_days"),
    )
    tenant_id: str = Field(sa_column=Column(Text, primary_key=True))
    reconfirmation_lead_days: int = Field(default=DEFAULT_LEAD_DAYS, sa_column=Column(
        Integer, nullable=False, server_default=str(DEFAULT_LEAD_DAYS)))
    overdue_reconfirmation_denies: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=text("false")))
    withdrawal_instructions: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))
    updated_by: str | None = Field(default=None, sa_column=Column(Text))
    updated_at: datetime = timestamp()


class Duty(SQLModel, table=True):
    __tablename__ = "duties"
    __table_args__ = (
        CheckConstraint(sql_in("kind", KINDS), name="kind"),
        CheckConstraint(sql_in("status", STATUSES), name="status"),
        Index("ix_duties_list", "tenant_id", "status", "kind", "due_at", "id"),
        Index("ix_duties_tenant_due", "tenant_id", "due_at", "id"),
        Index("ix_duties_subject", "subject_id", "purpose_key"),
        Index("ix_duties_processor", "tenant_id", "processor_key", "status",
              postgresql_where=text("processor_key IS NOT NULL")),
        Index("ix_duties_to_notify", "notify_at", postgresql_where=text("status = 'due' AND notified_at IS NULL")),
        Index("ix_duties_to_overdue", "due_at", postgresql_where=text("status = 'due'")),
    )
    id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), primary_key=True))
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    subject_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), nullable=False))
    kind: str = Field(sa_column=Column(Text, nullable=False))
    purpose_key: str | None = Field(default=None, sa_column=Column(Text))
    processor_key: str | None = Field(default=None, sa_column=Column(Text))
    notify_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    due_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    status: str = Field(sa_column=Column(Text, nullable=False))
    contents: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    fulfilment: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))
    cause_event_id: uuid.UUID | None = Field(default=None, sa_column=Column(UUID(as_uuid=True)))
    last_seq: int = Field(sa_column=Column(Integer, nullable=False))
    last_hash: str = Field(sa_column=Column(Text, nullable=False))
    notified_at: datetime | None = optional_timestamp()
    closed_at: datetime | None = optional_timestamp()
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class DutyRecord(SQLModel, table=True):
    __tablename__ = "duty_records"
    __table_args__ = (
        UniqueConstraint("duty_id", "seq"),
        CheckConstraint(sql_in("kind", KINDS), name="kind"),
        CheckConstraint(sql_in("status", STATUSES), name="status"),
        CheckConstraint(sql_in("action", ACTIONS), name="action"),
        CheckConstraint("hash ~ '^[0-9a-f]{64}$' AND (prev_hash IS NULL OR prev_hash ~ '^[0-9a-f]{64}$')",
                        name="hash_shape"),
        Index("ix_duty_records_subject", "subject_id"),
    )
    id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), primary_key=True))
    duty_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), nullable=False))
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    subject_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), nullable=False))
    seq: int = Field(sa_column=Column(Integer, nullable=False))
    kind: str = Field(sa_column=Column(Text, nullable=False))
    purpose_key: str | None = Field(default=None, sa_column=Column(Text))
    processor_key: str | None = Field(default=None, sa_column=Column(Text))
    action: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(sa_column=Column(Text, nullable=False))
    notify_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    due_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    detail: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    cause_event_id: uuid.UUID | None = Field(default=None, sa_column=Column(UUID(as_uuid=True)))
    recorded_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    record_version: int = Field(sa_column=Column(Integer, nullable=False))
    prev_hash: str | None = Field(default=None, sa_column=Column(Text))
    hash: str = Field(sa_column=Column(Text, nullable=False))
    seal: str = Field(sa_column=Column(Text, nullable=False))
