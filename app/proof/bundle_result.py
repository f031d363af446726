"""What verification reports: Unreadable, each Break, the Result, and how values are cut short in it.

Part of app.proof.verify_bundle (see its docstring; docs/proof.md)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from app.proof.bundle_format import MAX_LISTED


class Unreadable(Exception):
    """The input cannot be read as a bundle, key or checkpoint at all (exit status 2)."""


@dataclass
class Break:
    kind: str
    detail: str
    file: str | None = None
    line: int | None = None
    log_index: int | None = None
    tenant: str | None = None
    subject: str | None = None
    seq: int | None = None
    item: str | None = None  # an entry of a JSON member: "checkpoint 2 (tree_size 600)", "notice <id>"

    def where(self) -> str:
        parts = []
        if self.file:
            parts.append(f"{self.file}:{self.line}" if self.line is not None else self.file)
        if self.item:
            parts.append(self.item)
        if self.log_index is not None:
            parts.append(f"log index {self.log_index}")
        if self.subject is not None:
            parts.append(f"subject {self.tenant}/{self.subject}" + (f" seq {self.seq}" if self.seq is not None else ""))
        return ", ".join(parts) or "-"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "where": self.where(), "detail": self.detail, "file": self.file,
                "line": self.line, "log_index": self.log_index, "tenant": self.tenant, "subject": self.subject,
                "seq": self.seq, "item": self.item}


@dataclass
class Result:
    path: str
    tenant: str | None = None
    tree_size: int | None = None
    keys_from: str = "the bundle's jwks.json"
    counts: dict[str, int] = field(default_factory=dict)
    breaks: list[Break] = field(default_factory=list)
    by_kind: Counter = field(default_factory=Counter)
    trusted: dict[str, Any] | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.by_kind

    @property
    def breaks_total(self) -> int:
        return sum(self.by_kind.values())

    def add(self, kind: str, detail: str, **where: Any) -> None:
        self.by_kind[kind] += 1
        if len(self.breaks) < MAX_LISTED:
            self.breaks.append(Break(kind, detail, **where))

    def as_dict(self) -> dict[str, Any]:
        events = self.counts.get("events", 0)
        return {"valid": self.valid, "bundle": self.path, "tenant": self.tenant, "tree_size": self.tree_size,
                "keys_from": self.keys_from, "warnings": self.warnings, "counts": self.counts,
                "trusted_checkpoint": self.trusted,
                "breaks_total": self.breaks_total, "breaks_by_kind": dict(sorted(self.by_kind.items())),
                "breaks": [b.as_dict() for b in self.breaks], "breaks_listed": len(self.breaks),
                "seconds": round(self.seconds, 3),
                "events_per_second": round(events / self.seconds) if self.seconds and events else None}


def _cut(value: Any) -> Any:
    """A tenant or subject id kept with a break: itself, or its text (a tampered line's may be any JSON,
    kept as bytes by _hashable), cut short when long."""
    if value is None or type(value) is int:
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    elif not isinstance(value, str):
        value = repr(value)
    return value if len(value) <= 200 else _short(value, 200, quote=False)


def _short(value: Any, limit: int = 80, quote: bool = True) -> str:
    """A value an attacker may have made huge, for a message: its repr (or text), cut short."""
    text = repr(value) if quote or not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"
