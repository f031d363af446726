"""Tenant-wide verification runs (issue 11 point 4; docs/audit.md, "Tenant-wide verification").

A run is a report, not evidence: the runtime role writes it (the worker's progress), so a forged
row can claim anything, and an auditor who doubts it starts another run or verifies a bundle
offline. Nothing of the ledger depends on these rows.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Column, ForeignKey, Index, Integer, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from app.core.models import optional_timestamp, sql_in, timestamp, uuid_pk

STATUSES = ("running", "finished")
STAGES = ("subjects", "log", "done")  # every subject in keyset order, then the log against its checkpoints


def _count() -> Any:
    return Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))


class VerificationRun(SQLModel, table=True):
    __tablename__ = "verification_runs"
    __table_args__ = (
        # one running run per tenant: a second start finds it (app/audit/verify_job.py)
        Index("ux_verification_runs_running", "tenant_id", unique=True, postgresql_where=text("status = 'running'")),
        Index("ix_verification_runs_tenant_created", "tenant_id", "created_at", "id"),
        CheckConstraint(sql_in("status", STATUSES), name="status"),
        CheckConstraint(sql_in("stage", STAGES), name="stage"),
        CheckConstraint("batch_subjects BETWEEN 1 AND 100000", name="batch_subjects"),
    )
    id: uuid.UUID = uuid_pk()
    tenant_id: str = Field(sa_column=Column(Text, ForeignKey("tenants.id"), nullable=False))
    requested_by: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="running", sa_column=Column(Text, nullable=False, server_default="running"))
    stage: str = Field(default="subjects", sa_column=Column(Text, nullable=False, server_default="subjects"))
    valid: bool | None = Field(default=None, sa_column=Column(Boolean))
    batch_subjects: int = Field(sa_column=Column(Integer, nullable=False))
    # keyset: the member id (subjects.external_id) of the last subject whose batch is committed
    position: str | None = Field(default=None, sa_column=Column(Text))
    subjects_total: int = _count()
    events_total: int = _count()
    subjects_done: int = _count()
    events_done: int = _count()
    duty_records_done: int = _count()
    broken_total: int = _count()
    broken: list[Any] = Field(default_factory=list, sa_column=Column(JSONB, nullable=False,
                                                                     server_default=text("'[]'::jsonb")))
    log: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    error: str | None = Field(default=None, sa_column=Column(Text))
    lease_owner: str | None = Field(default=None, sa_column=Column(Text))
    lease_until: datetime | None = optional_timestamp()
    created_at: datetime = timestamp()
    started_at: datetime | None = optional_timestamp()
    updated_at: datetime = timestamp()
    finished_at: datetime | None = optional_timestamp()
