"""The tenant-wide Merkle log (RFC 9162 shape) and its signed checkpoints (docs/proof.md)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, Column, DateTime, Identity, Index, LargeBinary, SmallInteger, Text
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.postgresql import UUID
from sqlmodel import Field, SQLModel

from app.core.models import timestamp


class LogQueue(SQLModel, table=True):
    """Events appended but not yet given a place in the log (filled by the append trigger)."""

    __tablename__ = "ledger_log_queue"
    __table_args__ = (Index("ix_ledger_log_queue_tenant_position", "tenant_id", "position"),
                      Index("ix_ledger_log_queue_subject", "subject_id"))
    position: int = Field(sa_column=Column(BigInteger, Identity(always=True), nullable=False))
    event_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), primary_key=True))
    tenant_id: str = Field(sa_column=Column(Text, nullable=False))
    subject_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), nullable=False))
    event_hash: str = Field(sa_column=Column(Text, nullable=False))


class LogEntry(SQLModel, table=True):
    """Leaf `idx` of a tenant's log: one event hash, placed once (ledger_log_take)."""

    __tablename__ = "ledger_log"
    __table_args__ = (Index("ix_ledger_log_subject", "subject_id"),)
    tenant_id: str = Field(sa_column=Column(Text, primary_key=True))
    idx: int = Field(sa_column=Column(BigInteger, primary_key=True))
    event_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), nullable=False, unique=True))
    subject_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), nullable=False))
    event_hash: str = Field(sa_column=Column(Text, nullable=False))
    logged_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False,
                                                 server_default=sql_text("clock_timestamp()")))


class LogNode(SQLModel, table=True):
    """The hash of a complete, aligned subtree: leaves [idx * 2^level, (idx + 1) * 2^level)."""

    __tablename__ = "ledger_log_nodes"
    __table_args__ = (CheckConstraint("level >= 1", name="above_leaves"),)
    tenant_id: str = Field(sa_column=Column(Text, primary_key=True))
    level: int = Field(sa_column=Column(SmallInteger, primary_key=True))
    idx: int = Field(sa_column=Column(BigInteger, primary_key=True))
    hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Checkpoint(SQLModel, table=True):
    """A signed tree head; the signature is made with a key the database never holds."""

    __tablename__ = "ledger_checkpoints"
    tenant_id: str = Field(sa_column=Column(Text, primary_key=True))
    tree_size: int = Field(sa_column=Column(BigInteger, primary_key=True))
    root_hash: str = Field(sa_column=Column(Text, nullable=False))
    issued_at: datetime = timestamp()
    key_id: str = Field(sa_column=Column(Text, nullable=False))
    jws: str = Field(sa_column=Column(Text, nullable=False))
