"""Webhook tables: endpoints (who wants what), messages (the outbox), deliveries and their attempts."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Column, ForeignKey, Index, Integer, Text, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlmodel import Field, SQLModel

from app.core.models import optional_timestamp, sql_in, timestamp, uuid_pk

DELIVERY_STATUSES = ("pending", "delivered", "failed")


def _text_array(default: str = "{}"):
    return Field(default_factory=list,
                 sa_column=Column(ARRAY(Text), nullable=False, server_default=text(f"'{default}'::text[]")))


class WebhookEndpoint(SQLModel, table=True):
    """A processor's receiver URL and which consent changes it wants. Empty filters mean "all"."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_tenant", "tenant_id", "created_at"),)
    id: uuid.UUID = uuid_pk()
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    processor_id: uuid.UUID | None = Field(
        default=None, sa_column=Column(UUID(as_uuid=True), ForeignKey("processors.id"), nullable=True)
    )
    url: str = Field(sa_column=Column(Text, nullable=False))
    description: str | None = Field(default=None, sa_column=Column(Text))
    event_types: list[str] = _text_array()
    kinds: list[str] = _text_array("{marketing}")
    purposes: list[str] = _text_array()
    channels: list[str] = _text_array()
    categories: list[str] = _text_array()  # separate-consent categories (app/catalog/legal.py); empty: all
    enabled: bool = Field(default=True, sa_column=Column(Boolean, nullable=False, server_default=text("true")))
    disabled_reason: str | None = Field(default=None, sa_column=Column(Text))
    disabled_at: datetime | None = optional_timestamp()
    failing_since: datetime | None = optional_timestamp()
    secret: str = Field(sa_column=Column(Text, nullable=False))
    previous_secret: str | None = Field(default=None, sa_column=Column(Text))
    previous_secret_expires_at: datetime | None = optional_timestamp()
    created_at: datetime = timestamp()
    updated_at: datetime = timestamp()
    deleted_at: datetime | None = optional_timestamp()


class WebhookMessage(SQLModel, table=True):
    """One notification, written in the consent event's own transaction. `body` holds the exact
    bytes every delivery sends, so retries and replays sign and send the same thing."""

    __tablename__ = "webhook_messages"
    # the delivery log's subject filter; nothing reads messages by event or by tenant and time
    __table_args__ = (Index("ix_webhook_messages_subject", "subject_ref"),)
    id: uuid.UUID = uuid_pk()
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    type: str = Field(sa_column=Column(Text, nullable=False))
    subject_ref: str | None = Field(default=None, sa_column=Column(Text))
    event_id: uuid.UUID | None = Field(default=None, sa_column=Column(UUID(as_uuid=True)))
    body: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = timestamp()


class WebhookDelivery(SQLModel, table=True):
    """A message on its way to one endpoint. `next_attempt_at` doubles as the lease: a claim moves
    it past the lease, so a worker that dies leaves the delivery due again when the lease ends."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(sql_in("status", DELIVERY_STATUSES), name="status"),
        # the claim's per-endpoint probe, the next-due timer and the backlog metrics (one index for all)
        Index("ix_webhook_deliveries_endpoint_due", "endpoint_id", "next_attempt_at",
              postgresql_where=text("status = 'pending'")),
        Index("ix_webhook_deliveries_order", "endpoint_id", "subject_id", "seq",
              postgresql_where=text("status = 'pending'")),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", "created_at", "id"),
        Index("ix_webhook_deliveries_message", "message_id"),
    )
    id: uuid.UUID = uuid_pk()
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    message_id: uuid.UUID = Field(
        sa_column=Column(UUID(as_uuid=True), ForeignKey("webhook_messages.id"), nullable=False)
    )
    endpoint_id: uuid.UUID = Field(
        sa_column=Column(UUID(as_uuid=True), ForeignKey("webhook_endpoints.id"), nullable=False)
    )
    subject_id: uuid.UUID | None = Field(default=None, sa_column=Column(UUID(as_uuid=True)))
    seq: int | None = Field(default=None, sa_column=Column(BigInteger))
    status: str = Field(default="pending",
                        sa_column=Column(Text, nullable=False, server_default=text("'pending'")))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default=text("0")))
    next_attempt_at: datetime = timestamp()
    lease_token: uuid.UUID | None = Field(default=None, sa_column=Column(UUID(as_uuid=True)))
    last_attempt_at: datetime | None = optional_timestamp()
    last_status_code: int | None = Field(default=None, sa_column=Column(Integer))
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    delivered_at: datetime | None = optional_timestamp()
    failed_at: datetime | None = optional_timestamp()
    created_at: datetime = timestamp()


class WebhookAttempt(SQLModel, table=True):
    """One HTTP try of a delivery, kept for the processor's and the auditor's eyes."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "attempted_at"),)
    id: uuid.UUID = uuid_pk()
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    delivery_id: uuid.UUID = Field(
        sa_column=Column(UUID(as_uuid=True), ForeignKey("webhook_deliveries.id"), nullable=False)
    )
    attempted_at: datetime = timestamp()
    status_code: int | None = Field(default=None, sa_column=Column(Integer))
    latency_ms: float | None = Field(default=None)
    response_body: str | None = Field(default=None, sa_column=Column(Text))
    error: str | None = Field(default=None, sa_column=Column(Text))
    worker: str | None = Field(default=None, sa_column=Column(Text))
