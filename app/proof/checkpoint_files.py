"""CHECKPOINT_DIR: each checkpoint also kept as a file, outside the database's control.

A tenant id is not a path: files go only directly inside the directory, and are never overwritten
(the same content again is fine; different content is an alarm).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("consent_ledger.proof")


class CheckpointFileError(OSError):
    """A checkpoint file that must not be written or read: a tenant id that is no plain directory
    name inside CHECKPOINT_DIR, or a file already there with other content."""



def _refuse_path(directory: Path, tenant: Any, why: str) -> CheckpointFileError:
    log.error("refused a checkpoint file path for tenant %r in %s: %s", tenant, directory, why)
    return CheckpointFileError(f"tenant {tenant!r} has no checkpoint directory in {directory}: {why}")


def tenant_dir(directory: Path, tenant: str) -> Path:
    """`<directory>/<tenant>`, or CheckpointFileError (logged) unless it is a plain directory name
    directly inside `directory` once every symlink is resolved: a tenant id is not a path."""
    base = Path(directory).resolve()
    if not isinstance(tenant, str) or tenant in ("", ".", "..") or any(c in tenant for c in "/\\\0"):
        raise _refuse_path(base, tenant, "a tenant id with a path separator, NUL, or that is '.' or '..'")
    folder = (base / tenant).resolve()
    if folder.parent != base or folder.name != tenant:
        raise _refuse_path(base, tenant, f"it resolves to {folder}, not a directory of its own inside {base}")
    return folder


def newest_file(directory: Path, tenant: str) -> Path | None:
    folder = tenant_dir(directory, tenant)
    files = sorted(folder.glob("[0-9]*.json")) if folder.is_dir() else []
    return files[-1] if files else None


def write_file(directory: Path, checkpoint: dict[str, Any]) -> Path:
    """`<dir>/<tenant>/<tree_size:012d>.json`, atomically (a temporary file hard-linked into place)
    and never over another file: one already there with the same checkpoint is fine; with another
    one, CheckpointFileError, logged at ERROR (someone else writes into CHECKPOINT_DIR)."""
    tenant, size = checkpoint["tenant"], checkpoint["tree_size"]
    if type(size) is not int or size < 0:
        raise CheckpointFileError(f"tree_size {size!r} is not a tree size")
    folder = tenant_dir(directory, tenant)
    folder.mkdir(parents=True, exist_ok=True)
    folder = tenant_dir(directory, tenant)  # again: it may have been there already, as a symlink
    path = folder / f"{size:012d}.json"
    data = (json.dumps(checkpoint, indent=2, sort_keys=True) + "\n").encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if the name exists, like O_EXCL, and never shows a partial file
        except FileExistsError:
            _same_or_refuse(path, checkpoint)
        except OSError:  # no hard links on this file system: create it exclusively instead
            try:
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except FileExistsError:
                _same_or_refuse(path, checkpoint)
            else:
                with os.fdopen(out, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def _same_or_refuse(path: Path, checkpoint: dict[str, Any]) -> None:
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        existing = f"unreadable ({exc})"
    if existing != json.loads(json.dumps(checkpoint)):
        log.error("the checkpoint file %s already exists with other content: not overwritten (someone else writes "
                  "into CHECKPOINT_DIR, or two services sign for tenant %r)", path, checkpoint["tenant"])
        raise CheckpointFileError(f"{path} already exists with another checkpoint: not overwritten")
