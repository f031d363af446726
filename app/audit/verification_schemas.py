"""The shapes of tenant-wide verification runs on the wire (app/audit/verifications.py)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from app.audit.verify_batch import BREAKS_KEPT
from app.audit.verify_job import LISTED
from app.consents.chain import format_time


class VerificationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_subjects: int = Field(default=1000, ge=1, le=10_000,
                                description="Subjects read and committed per step (smaller: finer resume points)")


class Progress(BaseModel):
    subjects_done: int
    subjects_total: int = Field(description="The tenant's subjects when the run started (one created during the run "
                                                "is checked only if its member id sorts after the position then)")
    events_done: int
    events_total: int = Field(description="Their events when the run started")
    duty_records_done: int
    percent: float = Field(description="events_done of events_total (subjects when there are no events), 0-100")
    events_per_second: float | None = Field(description="Since the run started (a pause while no worker ran counts)")
    eta_seconds: float | None


class BrokenSubject(BaseModel):
    subject_id: str = Field(description="The member id")
    kinds: list[str] = Field(description="The kinds of break (as the per-subject verify names them)")
    breaks_total: int
    breaks: list[dict[str, Any]] = Field(description=f"The first {BREAKS_KEPT} breaks: kind, seq, event_id, purpose, "
                                                     "detail; GET /v1/subjects/{id}/consents/verify shows all")


class LogCheck(BaseModel):
    checkpoints: int
    checkpoints_verified: int
    tree_size: int
    breaks: list[dict[str, Any]] = Field(description="kind (checkpoint_signature, checkpoint_root, "
                                                     "checkpoint_beyond_log, checkpoint_file, log_gap, missing_event) "
                                                     "and detail")


class VerificationRead(BaseModel):
    id: uuid.UUID
    tenant: str
    status: Literal["running", "finished"]
    stage: Literal["subjects", "log", "done"]
    valid: bool | None = Field(description="null while running, and for a run ended by an error")
    error: str | None = Field(description="Why the run ended without a verdict (an error no retry would cure)")
    requested_by: str
    progress: Progress
    broken_total: int = Field(description="Broken subjects found so far")
    broken: list[BrokenSubject] = Field(description=f"The first {LISTED} broken subjects, in member-id order")
    log: LogCheck | None = Field(description="The checkpoints against the log (the last stage)")
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None


class VerificationPage(BaseModel):
    items: list[VerificationRead]
    next_cursor: str | None


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value


def read(row: Any) -> dict[str, Any]:
    """A run row as the API shows it."""
    started, end = row["started_at"], row["finished_at"] or row["updated_at"]
    seconds = (end - started).total_seconds() if started is not None else 0.0
    done, total = row["events_done"], row["events_total"]
    if not total:
        done, total = row["subjects_done"], row["subjects_total"]
    rate = row["events_done"] / seconds if seconds > 0 else None
    finished = row["status"] == "finished"
    eta = 0.0 if finished else (max(row["events_total"] - row["events_done"], 0) / rate if rate else None)
    return {
        "id": row["id"], "tenant": row["tenant_id"], "status": row["status"], "stage": row["stage"],
        "valid": row["valid"], "error": row["error"], "requested_by": row["requested_by"],
        "progress": {"subjects_done": row["subjects_done"], "subjects_total": row["subjects_total"],
                     "events_done": row["events_done"], "events_total": row["events_total"],
                     "duty_records_done": row["duty_records_done"],
                     "percent": 100.0 if finished else round(min(100.0, 100.0 * done / total), 2) if total else 0.0,
                     "events_per_second": round(rate, 1) if rate else None,
                     "eta_seconds": round(eta, 1) if eta is not None else None},
        "broken_total": row["broken_total"], "broken": _json(row["broken"]), "log": _json(row["log"]),
        "created_at": format_time(row["created_at"]), "started_at": format_time(row["started_at"]),
        "updated_at": format_time(row["updated_at"]), "finished_at": format_time(row["finished_at"]),
    }
