"""Duty request and response bodies (docs/duties.md)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.schemas import Text200, Text2000, UtcDatetime
from app.duties.models import DEFAULT_LEAD_DAYS

Kind = Literal["ad_result_notice", "reconfirmation", "suppression", "destruction", "ask_at_14", "reconsent"]
Status = Literal["due", "sent", "done", "overdue", "cancelled"]
NoticeChannel = Literal["sms", "email", "push", "kakao", "phone", "mail", "app", "in_person", "other"]


class FulfilmentIn(BaseModel):
    """How a duty was met. A notice (result notice, reconfirmation, asking at 14, reconsent) is
    `sent` with its channel; a destruction is `done` with what and how."""

    model_config = ConfigDict(extra="forbid")
    outcome: Literal["sent", "done"]
    at: UtcDatetime | None = Field(default=None, description="When it happened (default: now); not in the future")
    channel: NoticeChannel | None = Field(default=None, description="How the notice reached the person")
    what: Text2000 | None = Field(default=None, description="Destruction: the data destroyed")
    how: Text2000 | None = Field(default=None, description="Destruction: the method (e.g. irreversible deletion)")
    by: Text200 | None = Field(default=None, description="Who did it (default: the token's sub)")
    reference: Text200 | None = Field(default=None, description="The sender's own reference, e.g. a message id")
    note: Text2000 | None = None


class AckIn(BaseModel):
    """A processor's confirmation that it stopped processing for the withdrawn purpose."""

    model_config = ConfigDict(extra="forbid")
    stopped_at: UtcDatetime | None = Field(default=None, description="When processing stopped (default: now)")
    reference: Text200 | None = None
    note: Text2000 | None = None


class DutyRead(BaseModel):
    id: uuid.UUID
    kind: Kind
    status: Status
    subject_id: str
    purpose: str | None
    processor: str | None
    notify_at: datetime
    due_at: datetime
    contents: dict[str, Any]
    fulfilment: dict[str, Any] | None
    cause_event_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    last_hash: str


class DutyDetail(DutyRead):
    records: list[dict[str, Any]] = Field(description="The duty's hash-chained records, as hashed (docs/duties.md)")


class DutyPage(BaseModel):
    items: list[DutyRead]
    next_cursor: str | None
    counts: dict[str, int] | None = Field(default=None, description="Per kind, with every filter but kind and cursor")


class DutySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reconfirmation_lead_days: int = Field(default=DEFAULT_LEAD_DAYS, ge=0, le=365,
                                          description="How long before its deadline a reconfirmation comes due")
    overdue_reconfirmation_denies: bool = Field(
        default=False, description="Whether an overdue reconfirmation makes the permission check deny")
    withdrawal_instructions: dict[Literal["ko", "en"], Text2000] | None = Field(
        default=None, description="How to keep or withdraw, as the reconfirmation notice must say (Decree 62-3)")
