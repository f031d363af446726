"""Catalog request and response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.core.schemas import Key, Text200, Text2000, UtcDatetime

PurposeKind = Literal[
    "required", "optional", "marketing", "third_party", "sensitive", "unique_identifier", "overseas_transfer",
    "beyond_purpose", "disclosed",
]
LegalBasis = Literal["consent", "contract", "legal_obligation", "vital_interest", "legitimate_interest", "public_task"]
Category = Literal["collection_use", "third_party", "beyond_purpose", "sensitive", "unique_identifier", "marketing",
                   "overseas_transfer"]
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
    refusal_right: Text2000 | None = Field(default=None, description="That the person may refuse (consent only: "
                                                                     "required there, PIPA Art. 15(2)4)")
    refusal_consequence: Text2000 | None = Field(default=None, description="What refusing costs, or that it costs "
                                                                           "nothing (consent only: required there)")
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


class RetentionRule(Strict):
    """Until withdrawal or the end of the relationship, plus a statutory period (PIPA Art. 21(1)
    proviso): e.g. contract records 5 years and complaint records 3 years (e-commerce act Art. 6,
    its Decree Art. 6), visit logs 3 months (Protection of Communications Secrets Act Decree Art. 41)."""

    until: Literal["withdrawal", "termination"]
    years: int = Field(default=0, ge=0, le=50)
    months: int = Field(default=0, ge=0, le=600)
    days: int = Field(default=0, ge=0, le=3650)
    statute: Text200 | None = Field(default=None, description="The law that makes the data be kept")

    @model_validator(mode="after")
    def _statute_for_a_period(self) -> "RetentionRule":
        if (self.years or self.months or self.days) and self.statute is None:
            raise ValueError("keeping data past its purpose needs the statute that requires it (PIPA Art. 21(1))")
        return self


class PurposeCreate(Strict):
    """A purpose declares its legal basis (PIPA Art. 15(1)); a consent purpose its separate-consent
    category (Art. 22(1)). `kind` is the pre-2023 spelling of the category, still accepted (not
    "required": docs/legal-model.md)."""

    key: Key
    legal_basis: LegalBasis = Field(default="consent", description="consent, or a basis that needs none: "
                                    "contract 15(1)4, legal_obligation 15(1)2, vital_interest 15(1)5, "
                                    "legitimate_interest 15(1)6, public_task 15(1)3")
    category: Category | list[Category] | None = Field(
        default=None, description="Consent only, exactly one: collection_use 15(1)1, third_party 17(1)1, "
                                  "beyond_purpose 18(2)1, sensitive 23(1)1, unique_identifier 24(1)1, marketing "
                                  "22(1)7, overseas_transfer 28-8")
    kind: PurposeKind | None = Field(default=None, description="Deprecated: the category's former name")
    channel: Channel | None = Field(default=None, description="Marketing only: the advertising channel")
    advertises: list[Key] = Field(default_factory=list, max_length=100, description=(
        "Marketing only: the goods categories its wording advertises (empty: any); fixed once created, like the "
        "wording's scope. The permission check's `category` reads it"))
    recipient: Key | None = Field(default=None, description="Third-party only: the recipient's key")
    disclosures: Disclosures
    retention: RetentionRule | None = Field(
        default=None, description="When the data of this purpose is destroyed (PIPA Art. 21); default: at "
                                  "withdrawal for consent purposes, at the end of the relationship for others")


class PurposeUpdate(Patch):
    """Kind, channel and recipient are fixed: changing them would change what was consented to."""

    _not_null = refuse_null("disclosures", "active", "retention", "material")

    disclosures: Disclosures | None = None
    active: bool | None = None
    retention: RetentionRule | None = None
    material: bool | None = Field(default=None, description=(
        "With new disclosures: the change alters what was consented to (purpose, items, retention, recipient), "
        "so every consent given on the wording before needs fresh consent from `reconsent_from` (PIPA Art. "
        "15(2), 17(2)): a reconsent duty and a consent.reconsent_required webhook per person"))
    reconsent_from: UtcDatetime | None = Field(default=None, description="Default: now; never in the past")
    reason: Text2000 | None = Field(default=None, description="Why the wording changed (kept with the change)")


class PurposeReclassify(Strict):
    """Move a purpose to another legal basis from now on; events recorded before stay what they were."""

    legal_basis: LegalBasis
    category: Category | None = Field(default=None, description="For consent: its category (default: as before)")
    reason: Text2000 = Field(description="Why, for the catalog's history (e.g. the PIPC guidance it follows)")
    effective_from: UtcDatetime | None = Field(default=None, description=(
        "From when (default: now). A later date is applied by the worker once it has come (within "
        "BASIS_CHANGE_INTERVAL_SECONDS), e.g. with the policy version that announces it; never a past date"))


class PurposeBasisChangeRead(BaseModel):
    legal_basis_before: str
    category_before: str | None
    legal_basis: str
    category: str | None
    effective_from: datetime
    changed_by: str
    reason: str


class PurposeRead(BaseModel):
    id: uuid.UUID
    key: str
    kind: str
    legal_basis: str
    legal_basis_article: str
    category: str | None
    category_article: str | None
    channel: str | None
    advertises: list[str]
    recipient: str | None
    retention: RetentionRule | None = None
    required: bool
    disclosures: Disclosures
    disclosure_hash: str
    active: bool
    created_at: datetime
    updated_at: datetime


NoticeImpact = Literal["minor", "unfavourable", "material"]
IMPACT = ("What the change does to the people it applies to: a new version of a published notice takes effect "
          "at least 7 days after it is published, 30 days when it is unfavourable or material (e-commerce "
          "standard terms Art. 3(4); PIPA Art. 15(2), 17(2)); the first version of a notice needs no lead")
FORCE = "Publish with less lead than the law's notice period anyway: why (recorded with the token's sub)"


class NoticeCreate(Strict):
    key: Key = Field(description="Which document, e.g. 'privacy-policy'")
    version: str = Field(min_length=1, max_length=64)
    title: Text200
    language: str = Field(default="ko", pattern=r"^[a-z]{2}(-[A-Z]{2})?$")
    body: str = Field(min_length=1, max_length=1_000_000)
    effective_at: UtcDatetime
    publish: bool = Field(default=False, description="Publish at once; a published notice never changes")
    impact: NoticeImpact = Field(default="minor", description=IMPACT)
    force_reason: Text2000 | None = Field(default=None, description=FORCE)


class NoticeUpdate(Patch):
    _not_null = refuse_null("title", "body", "effective_at", "impact")
    title: Text200 | None = None
    body: str | None = Field(default=None, min_length=1, max_length=1_000_000)
    effective_at: UtcDatetime | None = None
    impact: NoticeImpact | None = None


class NoticePublish(Strict):
    force_reason: Text2000 | None = Field(default=None, description=FORCE)


class NoticeRead(BaseModel):
    id: uuid.UUID
    key: str
    version: str
    title: str
    language: str
    sha256: str
    effective_at: datetime
    published_at: datetime | None
    impact: NoticeImpact = "minor"
    forced_reason: str | None = None
    forced_by: str | None = None
    created_at: datetime


class NoticeDetail(NoticeRead):
    body: str


class Presented(Strict):
    key: Key
    condition_of_service: bool = Field(
        default=False, description="Refusing fails the request: only third_party, sensitive, unique_identifier "
                                   "and overseas_transfer consents (PIPA Art. 16(3), 22(5))")


PresentedList = list[Key | Presented]


class CollectionPointCreate(Strict):
    key: Key
    name: Text200
    kind: CollectionPointKind
    notice_key: Key
    purposes: PresentedList = Field(min_length=1, description="Purpose keys (or {key, condition_of_service}), in "
                                                              "the order the form shows them")
    for_children: bool = Field(default=False, description="Children under 14 may be signed up here, by their "
                                                          "legal guardian (PIPA Art. 22-2; docs/duties.md)")


class CollectionPointUpdate(Patch):
    _not_null = refuse_null("name", "notice_key", "purposes", "for_children")
    name: Text200 | None = None
    notice_key: Key | None = None
    purposes: PresentedList | None = Field(default=None, min_length=1)
    for_children: bool | None = None


class CollectionPointRead(BaseModel):
    id: uuid.UUID
    key: str
    name: str
    kind: str
    notice_key: str
    purposes: list[str]
    conditions: list[str] = Field(description="The presented purposes that are a condition of this service")
    for_children: bool = False
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
    legal_basis: str
    legal_basis_article: str
    category: str | None
    section: str = Field(description="The form section it belongs to (see Form.sections)")
    channel: str | None
    required: bool = Field(description="A condition of this service: refusing fails the request")
    checkbox: bool = Field(description="Consent only; a purpose processed without consent is shown, and "
                                       "acknowledged (decision 'acknowledged'), never ticked")
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


class FormSection(BaseModel):
    section: str = Field(description="without_consent, or a consent category (PIPA Art. 22(1))")
    title: str
    title_en: str
    article: str | None
    purposes: list[str]


class Form(BaseModel):
    collection_point: str
    name: str
    kind: str
    notice: FormNotice
    sections: list[FormSection] = Field(description="Without-consent items first, then one section per consent "
                                                    "category: consent is asked separately per category")
    purposes: list[FormPurpose]
