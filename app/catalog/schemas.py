"""Catalog request and response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.schemas import Key, Text200, Text2000, UtcDatetime

PurposeKind = Literal[
    "required", "optional", "marketing", "third_party", "sensitive", "unique_identifier", "overseas_transfer"
]
Channel = Literal["sms", "email", "push", "kakao", "phone", "night"]
CollectionPointKind = Literal["signup", "preference_center", "event", "phone", "paper", "other"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Patch(Strict):
    """Partial update: an omitted field is kept, null clears an optional field, and null for a
    field that must have a value is an error (see `refuse_null`) rather than silently ignored."""

    def changes(self) -> dict:
        return self.model_dump(exclude_unset=True)


def _not_null(cls, value):
    if value is None:
        raise ValueError("cannot be null; omit the field to keep its value")
    return value


def refuse_null(*fields: str):
    """Validator for PATCH fields that may be omitted but never set to null."""
    return field_validator(*fields)(classmethod(_not_null))


class DisclosureText(Strict):
    """What the person is told when asked (PIPA Art. 15(2), 17(2)) in one language."""

    purpose: Text2000 = Field(description="What the data is used for (for third parties: the recipient's purpose)")
    items: list[Text200] = Field(min_length=1, description="Personal data items collected or provided")
    retention: Text2000 = Field(description="How long the data is kept")
    refusal_right: Text2000 = Field(description="That the person may refuse")
    refusal_consequence: Text2000 = Field(description="What refusing costs, or that it costs nothing")
    recipient: Text200 | None = Field(default=None, description="Third-party recipient as shown (third_party only)")


class Disclosures(Strict):
    ko: DisclosureText
    en: DisclosureText | None = None


class RecipientCreate(Strict):
    key: Key
    name: Text200
    name_en: Text200 | None = None
    country: str = Field(default="KR", pattern=r"^[A-Z]{2}$")
    contact: Text200 | None = None


class RecipientUpdate(Patch):
    _not_null = refuse_null("name", "country")
    name: Text200 | None = None
    name_en: Text200 | None = None
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    contact: Text200 | None = None


class RecipientRead(BaseModel):
    id: uuid.UUID
    key: str
    name: str
    name_en: str | None
    country: str
    contact: str | None
    created_at: datetime
    updated_at: datetime


class ProcessorCreate(Strict):
    key: Key
    name: Text200
    name_en: Text200 | None = None
    task: Text2000
    task_en: Text2000 | None = None
    country: str = Field(default="KR", pattern=r"^[A-Z]{2}$")


class ProcessorUpdate(Patch):
    _not_null = refuse_null("name", "task", "country")
    name: Text200 | None = None
    name_en: Text200 | None = None
    task: Text2000 | None = None
    task_en: Text2000 | None = None
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")


class ProcessorRead(BaseModel):
    id: uuid.UUID
    key: str
    name: str
    name_en: str | None
    task: str
    task_en: str | None
    country: str
    created_at: datetime
    updated_at: datetime


class PurposeCreate(Strict):
    key: Key
    kind: PurposeKind
    channel: Channel | None = Field(default=None, description="Marketing only: the advertising channel")
    recipient: Key | None = Field(default=None, description="Third-party only: the recipient's key")
    disclosures: Disclosures


class PurposeUpdate(Patch):
    """Kind, channel and recipient are fixed: changing them would change what was consented to."""

    _not_null = refuse_null("disclosures", "active")

    disclosures: Disclosures | None = None
    active: bool | None = None


class PurposeRead(BaseModel):
    id: uuid.UUID
    key: str
    kind: str
    channel: str | None
    recipient: str | None
    required: bool
    disclosures: Disclosures
    disclosure_hash: str
    active: bool
    created_at: datetime
    updated_at: datetime


class NoticeCreate(Strict):
    key: Key = Field(description="Which document, e.g. 'privacy-policy'")
    version: str = Field(min_length=1, max_length=64)
    title: Text200
    language: str = Field(default="ko", pattern=r"^[a-z]{2}(-[A-Z]{2})?$")
    body: str = Field(min_length=1, max_length=1_000_000)
    effective_at: UtcDatetime
    publish: bool = Field(default=False, description="Publish at once; a published notice never changes")


class NoticeUpdate(Patch):
    _not_null = refuse_null("title", "body", "effective_at")
    title: Text200 | None = None
    body: str | None = Field(default=None, min_length=1, max_length=1_000_000)
    effective_at: UtcDatetime | None = None


class NoticeRead(BaseModel):
    id: uuid.UUID
    key: str
    version: str
    title: str
    language: str
    sha256: str
    effective_at: datetime
    published_at: datetime | None
    created_at: datetime


class NoticeDetail(NoticeRead):
    body: str


class CollectionPointCreate(Strict):
    key: Key
    name: Text200
    kind: CollectionPointKind
    notice_key: Key
    purposes: list[Key] = Field(min_length=1, description="Purpose keys, in the order the form shows them")


class CollectionPointUpdate(Patch):
    _not_null = refuse_null("name", "notice_key", "purposes")
    name: Text200 | None = None
    notice_key: Key | None = None
    purposes: list[Key] | None = Field(default=None, min_length=1)


class CollectionPointRead(BaseModel):
    id: uuid.UUID
    key: str
    name: str
    kind: str
    notice_key: str
    purposes: list[str]
    created_at: datetime
    updated_at: datetime


class FormRecipient(BaseModel):
    key: str
    name: str
    name_en: str | None
    country: str


class FormPurpose(BaseModel):
    key: str
    kind: str
    channel: str | None
    required: bool
    checked: Literal[False] = Field(default=False, description="Always false: consent is never pre-checked")
    recipient: FormRecipient | None
    disclosures: Disclosures
    disclosure_hash: str = Field(description="Echo back with the decision to prove which wording was shown")


class FormNotice(BaseModel):
    id: uuid.UUID
    key: str
    version: str
    title: str
    sha256: str
    effective_at: datetime


class Form(BaseModel):
    collection_point: str
    name: str
    kind: str
    notice: FormNotice
    purposes: list[FormPurpose]
