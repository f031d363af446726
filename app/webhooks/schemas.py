"""Webhook request and response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.catalog.schemas import Category, Channel, Patch, PurposeKind, refuse_null
from app.core.schemas import Key, Url, UtcDatetime

EventType = Literal[
    "consent.granted", "consent.refused", "consent.withdrawn", "consent.reconfirmed", "consent.expired",
    "consent.revoked", "consent.reconsent_required",
    # A signed checkpoint of the tenant's log (docs/proof.md); sent only to endpoints that list it.
    "ledger.checkpoint",
    # Duties (docs/duties.md), sent only to endpoints that list them: one came due, or is overdue.
    "duty.ad_result_notice", "duty.reconfirmation", "duty.suppression", "duty.destruction", "duty.ask_at_14",
    "duty.reconsent", "duty.overdue",
]
DeliveryStatus = Literal["pending", "delivered", "failed"]


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_types: list[EventType] = Field(
        default_factory=list,
        description="Empty: every consent event type; `ledger.checkpoint` (signed log checkpoints) and `duty.*` "
                    "(docs/duties.md) only when listed")
    kinds: list[PurposeKind] = Field(default_factory=lambda: ["marketing"],
                                     description="Purpose kinds to hear about; default marketing only")
    purposes: list[Key] = Field(default_factory=list, description="Purpose keys; empty: every purpose")
    channels: list[Channel] = Field(default_factory=list,
                                    description="Marketing channels (e.g. ['sms']); empty: every channel")
    categories: list[Category] = Field(default_factory=list,
                                       description="Consent categories (PIPA Art. 22(1), e.g. ['third_party']); "
                                                   "empty: every category")


class EndpointCreate(Filters):
    url: Url = Field(description="https URL of the receiver (plain http only for allow-listed hosts)")
    description: str | None = Field(default=None, max_length=500)
    processor: Key | None = Field(default=None, description="Key of the processor (수탁사) owning this endpoint")
    enabled: bool = True


class EndpointUpdate(Patch):
    url: Url | None = None
    description: str | None = Field(default=None, max_length=500)
    processor: Key | None = None
    enabled: bool | None = Field(default=None, description="true re-enables an endpoint the service disabled")
    event_types: list[EventType] | None = None
    kinds: list[PurposeKind] | None = None
    purposes: list[Key] | None = None
    channels: list[Channel] | None = None
    categories: list[Category] | None = None

    _not_null = refuse_null("url", "enabled", "event_types", "kinds", "purposes", "channels", "categories")


class EndpointRead(BaseModel):
    id: uuid.UUID
    url: str
    description: str | None
    processor: str | None
    event_types: list[str]
    kinds: list[str]
    purposes: list[str]
    channels: list[str]
    categories: list[str]
    enabled: bool
    disabled_reason: str | None = Field(description="Why the service disabled it (410, continuous failure)")
    disabled_at: datetime | None
    failing_since: datetime | None = Field(description="Start of the current run of failed attempts")
    secret_rotation_ends_at: datetime | None = Field(
        description="Until then deliveries also carry a signature made with the previous secret")
    created_at: datetime
    updated_at: datetime


class EndpointWithSecret(EndpointRead):
    secret: str = Field(description="whsec_... signing secret; shown only now, store it safely")


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: int | None = Field(
        default=None, ge=0, le=30 * 86400,
        description="How long the old secret keeps signing too (default: WEBHOOK_SECRET_GRACE_SECONDS)")


class AttemptRead(BaseModel):
    attempted_at: datetime
    status_code: int | None
    latency_ms: float | None
    response_body: str | None = Field(description="First 1 KiB of the receiver's answer")
    error: str | None
    worker: str | None


class DeliveryRead(BaseModel):
    id: uuid.UUID
    message_id: uuid.UUID = Field(description="The webhook-id header, the same on every attempt")
    endpoint_id: uuid.UUID
    type: str
    subject_id: str | None
    status: DeliveryStatus
    attempts: int = Field(description="Attempts in the current round of the retry schedule (a manual retry or "
                                      "recover starts a new round); attempts_log has every try")
    next_attempt_at: datetime | None = Field(
        description="null once delivered or failed, and while the endpoint is disabled")
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    failed_at: datetime | None
    created_at: datetime


class DeliveryDetail(DeliveryRead):
    attempts_log: list[AttemptRead]


class DeliveryPage(BaseModel):
    items: list[DeliveryRead]
    next_cursor: str | None


class MessageRead(BaseModel):
    id: uuid.UUID
    type: str
    subject_id: str | None
    event_id: uuid.UUID | None
    payload: dict[str, Any] = Field(description="The body every delivery of this message sends")
    created_at: datetime
    deliveries: list[DeliveryRead]


class Queued(BaseModel):
    message_id: uuid.UUID
    delivery_id: uuid.UUID


class RecoverIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: UtcDatetime = Field(description="Failed deliveries created at or after this time are sent again")
    until: UtcDatetime | None = None


class Recovered(BaseModel):
    endpoint_id: uuid.UUID
    requeued: int
    endpoint_enabled: bool = Field(description="A disabled endpoint gets nothing until it is enabled again")
