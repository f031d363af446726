"""Consent request and response bodies."""

from __future__ import annotations

import ipaddress
import uuid
from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.core.schemas import EventTime, Key, Text200, UtcDatetime

# "acknowledged": the answer for a purpose processed without consent (shown, never ticked).
Decision = Literal["granted", "refused", "acknowledged"]
# "agree_all": the form's "agree to all"; still one decision, and one event, per item (Art. 22(1)).
Method = Literal["web", "app", "phone", "paper", "email", "api", "agree_all"]
ActorType = Literal["subject", "guardian", "operator"]
Status = Literal["granted", "refused", "withdrawn", "expired", "revoked", "acknowledged"]
Action = Literal["granted", "refused", "withdrawn", "reconfirmed", "expired", "revoked", "acknowledged"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")



class GuardianEvidence(Strict):
    """How the legal guardian of a child under 14 was verified (PIPA Art. 22-2, Decree Art. 17-2(1)):
    an SMS to the guardian's phone answered, card details, mobile identity verification, a signed
    paper, an email answered, a phone call, or another way the Decree allows (described)."""

    verification_method: Literal["sms", "card", "mobile_identity", "signed_paper", "email", "phone", "other"]
    description: Text200 | None = Field(default=None, description="Required for `other`: how it was done")
    verified_at: UtcDatetime | None = None
    reference: Text200 = Field(description="The evidence reference: the verifier's transaction id, the "
                                           "paper's filing number ...")

    @model_validator(mode="after")
    def _other_is_described(self) -> "GuardianEvidence":
        if self.verification_method == "other" and self.description is None:
            raise ValueError("verification_method 'other' needs a description of how the guardian was verified")
        return self


class Child(Strict):
    """The tenant declares the person under 14; the ledger keeps no birth date, only the day they turn 14."""

    turns_14_on: date = Field(description="The day the child turns 14 (KST): the ledger then asks the person "
                                          "themself (a duty, docs/duties.md)")


class Actor(Strict):
    type: ActorType = "subject"
    guardian: GuardianEvidence | None = Field(default=None, description="Required when type is guardian")

    @model_validator(mode="after")
    def _guardian_needs_evidence(self) -> "Actor":
        if self.type == "guardian" and self.guardian is None:
            raise ValueError("a guardian's decision must say how the guardian was verified (actor.guardian)")
        if self.type != "guardian" and self.guardian is not None:
            raise ValueError("actor.guardian is only for type 'guardian'")
        return self


class ClientEvidence(Strict):
    """The end user's network details, forwarded by a trusted backend (scope evidence:forward)."""

    ip: str | None = None
    user_agent: str | None = Field(default=None, max_length=1000)

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        return None if value is None else str(ipaddress.ip_address(value))


class DecisionIn(Strict):
    purpose: Key
    decision: Decision
    prechecked: bool = Field(
        default=False, description="Whether the box was ticked before the person acted; true is refused"
    )
    disclosure_hash: str | None = Field(
        default=None, description="The form's disclosure_hash for this purpose; required for third_party"
    )


class ConsentRecord(Strict):
    collection_point: Key
    notice_id: uuid.UUID = Field(description="The notice version the form showed (echo the form's notice.id)")
    method: Method = "web"
    actor: Actor = Field(default_factory=Actor)
    occurred_at: EventTime | None = Field(default=None, description="When the person acted (client clock, 2000 or later)")
    evidence: ClientEvidence | None = None
    decisions: list[DecisionIn] = Field(min_length=1, max_length=200)
    child: Child | None = Field(default=None, description="The person is under 14: the decisions are the legal "
                                                          "guardian's (PIPA Art. 22-2), at a form for children")


class WithdrawalIn(Strict):
    method: Method = "web"
    actor: Actor = Field(default_factory=Actor)
    occurred_at: EventTime | None = None
    evidence: ClientEvidence | None = None
    reason: str | None = Field(default=None, max_length=1000)


class BulkWithdrawalIn(WithdrawalIn):
    purposes: list[Key] | None = Field(default=None, min_length=1, description="Withdraw these purposes")
    kind: Literal["marketing", "third_party", "optional"] | None = Field(
        default=None, description="Or withdraw every granted purpose of this kind (e.g. all marketing)"
    )

    @model_validator(mode="after")
    def _one_selector(self) -> "BulkWithdrawalIn":
        if (self.purposes is None) == (self.kind is None):
            raise ValueError("give exactly one of 'purposes' or 'kind'")
        return self


class NoticeRef(BaseModel):
    id: uuid.UUID
    key: str
    version: str


class EventActor(BaseModel):
    type: str
    ref: str | None = Field(description="The operator's token `sub` when an operator recorded it")


class EventNotice(BaseModel):
    id: uuid.UUID
    key: str
    version: str
    sha256: str | None = Field(description="SHA-256 of the notice text the person was shown")
    superseded_at: str | None = Field(
        description="Set when the form showed this version after a newer one took effect (within the grace "
                    "window): when the newer one did")


class EventEvidence(BaseModel):
    id: uuid.UUID
    commitment: str = Field(description="HMAC-SHA256 over the raw evidence (IP, user agent, guardian "
                                        "verification), which is kept apart and erasable")


class EventRead(BaseModel):
    """An event exactly as its hash covers it: `hash` = SHA-256 of the RFC 8785 form of this object
    without `hash` (chain_version 2; docs/proof.md). Times print as `YYYY-MM-DDTHH:MM:SS.ffffffZ`."""

    chain_version: int
    tenant: str
    subject_id: str = Field(description="The tenant's member id")
    id: uuid.UUID
    seq: int
    request_id: uuid.UUID
    purpose: str
    version: int
    action: Action
    status: Status
    previous_status: Status | None
    collection_point: str | None
    notice: EventNotice | None
    disclosure_hash: str | None
    method: str
    actor: EventActor
    evidence: EventEvidence | None
    occurred_at: str
    recorded_at: str
    reason: str | None
    prev_hash: str | None
    hash: str


class NextDuty(BaseModel):
    id: uuid.UUID
    kind: str
    status: Literal["due", "overdue"]
    notify_at: datetime
    due_at: datetime


class StateRead(BaseModel):
    purpose: str
    kind: str
    channel: str | None
    status: Status
    since: datetime
    version: int
    notice: NoticeRef | None
    collection_point: str | None
    last_event_id: uuid.UUID
    next_duty: NextDuty | None = Field(default=None, description="The purpose's next open duty (docs/duties.md): "
                                                                 "a reconfirmation, a result notice, a suppression")


class StatePage(BaseModel):
    subject_id: str
    as_of: datetime | None = Field(description="null for the current state")
    consents: list[StateRead]


class ReceiptRef(BaseModel):
    id: uuid.UUID = Field(description="GET /v1/receipts/{id} returns it later, with inclusion proofs")
    jws: str = Field(description="The signed consent receipt (compact JWS, EdDSA; Kantara CR 1.1 / ISO/IEC TS "
                                 "27560 shape): verify with the key from /.well-known/consent-ledger/jwks.json")


class RecordResult(BaseModel):
    subject_id: str
    request_id: uuid.UUID
    recorded_at: datetime
    events: list[EventRead]
    receipt: ReceiptRef


class WithdrawalItem(BaseModel):
    purpose: str
    changed: bool = Field(description="False when there was nothing granted to withdraw")
    status: Status | None = Field(description="Status after the call; null when nothing was ever recorded")
    detail: str
    event: EventRead | None


class WithdrawalResult(BaseModel):
    subject_id: str
    results: list[WithdrawalItem]
    receipt: ReceiptRef | None = Field(description="null when nothing was withdrawn")


class OpenedDuty(BaseModel):
    duty_id: str
    kind: str
    processor: str | None
    due_at: str


class ReconfirmResult(BaseModel):
    subject_id: str
    event: EventRead
    duties: list[OpenedDuty] = Field(description="The next reconfirmation (docs/duties.md)")
    receipt: ReceiptRef


class TerminationResult(BaseModel):
    subject_id: str
    events: list[EventRead] = Field(description="One per purpose that ended; empty when nothing was left")
    duties: list[OpenedDuty] = Field(description="Destruction, result notice and suppression duties opened")
    receipt: ReceiptRef | None


class HistoryPage(BaseModel):
    subject_id: str
    items: list[EventRead]
    next_cursor: str | None


class ChainBreak(BaseModel):
    kind: Literal[
        "missing_event", "extra_event", "altered_event", "broken_link", "unsealed_event", "time_reversed",
        "head_mismatch", "broken_fold", "state_mismatch", "catalog_mismatch", "notice_mismatch",
        "disclosure_mismatch", "evidence_mismatch", "not_in_log", "log_mismatch", "legacy_after_v2",
        "unreadable_row",
    ]
    seq: int | None
    event_id: uuid.UUID | None
    purpose: str | None
    detail: str


class LogCoverage(BaseModel):
    logged: int = Field(description="Events with a place in the tenant's Merkle log")
    pending: int = Field(description="Events queued for the next checkpoint")


class ChainVerification(BaseModel):
    subject_id: str
    valid: bool
    events_checked: int
    head_hash: str | None
    log: LogCoverage
    breaks: list[ChainBreak] = Field(description="Every break found (at most 100), in the order checked")
    first_break: ChainBreak | None


class EvidenceRead(BaseModel):
    id: uuid.UUID
    recorded_at: datetime
    ip: str | None
    user_agent: str | None
    guardian: dict | None
    commitment: str = Field(description="HMAC-SHA256 the events carry as evidence.commitment")
    purged_at: datetime | None = Field(description="When the raw values were destroyed (retention ended)")


class EvidencePage(BaseModel):
    subject_id: str
    items: list[EvidenceRead]


class ReceiptInclusion(BaseModel):
    event_id: uuid.UUID
    pending: bool = Field(description="True until a checkpoint covers the event (at most a minute or so)")
    leaf_index: int | None = None
    tree_size: int | None = None
    event_hash: str | None = None
    leaf_hash: str | None = None
    audit_path: list[str] | None = Field(default=None, description="RFC 9162 inclusion proof, hex SHA-256 nodes")
    checkpoint: dict | None = Field(default=None, description="The signed checkpoint the proof is against")


class ReceiptRead(BaseModel):
    id: uuid.UUID
    subject_id: str
    issued_at: datetime
    jws: str
    inclusion: list[ReceiptInclusion]
