"""Reading the ZIP safely: size limits, chunked inflate, splitting into lines and blocks, bounded JSON.

Part of app.proof.verify_bundle (see its docstring; docs/proof.md)."""
from __future__ import annotations

import hashlib
import zipfile
from typing import Any, Self

import orjson

from app.proof.bundle_format import (
    CATALOG,
    CHUNK,
    JSON_DENSITY,
    JSON_SLACK,
    LIMITS,
    LINE_MAX,
    LINE_SLACK,
    MANIFEST,
    MEMBERS,
    MIN_LINE,
    RATIO,
    RATIO_SLACK,
)
from app.proof.bundle_result import Unreadable


def _parses(text: bytes) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


class _Member:
    """A member of the ZIP read through the limits above, counted and hashed as it is read: refused
    (Unreadable) before anything is inflated when the ZIP declares more than its budget, and at the
    first chunk past it otherwise (a ZIP may declare sizes it does not keep)."""

    def __init__(self, zf: zipfile.ZipFile, name: str) -> None:
        info = zf.getinfo(name)
        self.name = name
        self.budget, self.why = _budget(info)
        if self.budget is not None and info.file_size > self.budget:
            raise Unreadable(_too_big(name, self.budget, self.why, info.file_size))
        self.file = zf.open(info)
        self.size = 0
        self.digest = hashlib.sha256()

    def read(self, n: int) -> bytes:
        data = self.file.read(n)
        self.size += len(data)
        if self.budget is not None and self.size > self.budget:
            raise Unreadable(_too_big(self.name, self.budget, self.why))
        self.digest.update(data)
        return data

    def read_all(self, limit: int | None = None) -> bytes:
        """The rest of the member; Unreadable past `limit` bytes in all (a tighter budget)."""
        parts = []
        while chunk := self.read(CHUNK):
            parts.append(chunk)
            if limit is not None and self.size > limit:
                raise Unreadable(_too_big(self.name, limit, "to be parsed whole"))
        return b"".join(parts)

    def hexdigest(self) -> str:
        return self.digest.hexdigest()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def _budget(info: zipfile.ZipInfo) -> tuple[int | None, str]:
    """(the inflated bytes a member may have, None for no limit; what sets it)."""
    name = info.filename
    budget, why = LIMITS.get(name), "the limit for this member"
    if name in RATIO:
        by_ratio = RATIO[name] * info.compress_size + RATIO_SLACK
        if budget is None or by_ratio < budget:
            budget = by_ratio
            why = f"{RATIO[name]} times its {info.compress_size} compressed bytes, plus {RATIO_SLACK}"
    return budget, why


def _too_big(name: str, limit: int, why: str, declared: int | None = None) -> str:
    said = f"; the ZIP declares {declared}" if declared is not None else ""
    return f"member {name} inflates past {limit} bytes ({why}{said}): not read further"


def _check_sizes(zf: zipfile.ZipFile) -> None:
    """Every member a verifier reads, against its budget as the ZIP declares it: a bomb is refused
    before anything is inflated (or any worker started)."""
    for info in zf.infolist():
        if info.filename in MEMBERS or info.filename in (MANIFEST, CATALOG):
            budget, why = _budget(info)
            if budget is not None and info.file_size > budget:
                raise Unreadable(_too_big(info.filename, budget, why, info.file_size))


def _check_lines(name: str, data: bytes, first_line: int) -> int:
    """The number of lines in `data` (whole lines, without the last newline), the first being line
    `first_line` of member `name`; Unreadable when one is longer than LINE_MAX or they are far shorter
    than any entry (MIN_LINE). A few memchr passes, no loop per line: a line longer than LINE_MAX
    holds a whole aligned window of LINE_MAX / 2 bytes without a newline."""
    lines = data.count(b"\n") + 1
    if lines > len(data) // MIN_LINE + LINE_SLACK:
        raise Unreadable(f"member {name}: lines {first_line} to {first_line + lines - 1} have {len(data) // lines} "
                         f"bytes on average, far fewer than any entry (at least {MIN_LINE}): not a bundle's")
    if len(data) > LINE_MAX:
        width = LINE_MAX // 2
        for start in range(0, len(data) - width + 1, width):
            if data.find(b"\n", start, start + width) < 0:
                begin = data.rfind(b"\n", 0, start) + 1
                end = data.find(b"\n", start + width)
                if (len(data) if end < 0 else end) - begin > LINE_MAX:
                    number = first_line + data.count(b"\n", 0, begin)
                    raise Unreadable(f"member {name}: line {number} is longer than {LINE_MAX} bytes")
    return lines


def _blocks(member: Any, name: str, size: int, head: bytes = b"") -> Any:
    """(bytes of whole lines without the last newline, number of its first line, number of lines),
    reading `member` `size` bytes at a time (`head`: its first bytes, already read). Linear whatever
    the chunks: each byte is copied once into its block; the part of a line not yet ended is kept as a
    list of pieces, never more than LINE_MAX bytes of them."""
    pending: list[Any] = []  # the pieces of a line not ended yet
    waiting = 0  # their bytes
    line = 1
    while chunk := head or member.read(size):
        head = b""
        cut = chunk.rfind(b"\n")
        if cut < 0:
            pending.append(chunk)
            waiting += len(chunk)
            if waiting > LINE_MAX:
                raise Unreadable(f"member {name}: line {line} is longer than {LINE_MAX} bytes")
            continue
        if pending:
            pending.append(memoryview(chunk)[:cut])
            block = b"".join(pending)
        else:
            block = chunk[:cut]
        rest = memoryview(chunk)[cut + 1:]
        pending, waiting = ([rest], len(rest)) if rest else ([], 0)
        lines = _check_lines(name, block, line)
        if waiting > LINE_MAX:
            raise Unreadable(f"member {name}: line {line + lines} is longer than {LINE_MAX} bytes")
        yield block, line, lines
        line += lines
    if pending:
        block = b"".join(pending)
        yield block, line, _check_lines(name, block, line)


def _json(name: str, data: bytes) -> Any:
    """The JSON value of a member's bytes (orjson.JSONDecodeError when it is not JSON); Unreadable
    when it holds more objects and arrays than JSON_DENSITY allows (counted before parsing)."""
    containers = data.count(b"{") + data.count(b"[")
    if containers > len(data) // JSON_DENSITY + JSON_SLACK:
        raise Unreadable(f"member {name}: {containers} JSON objects or arrays in {len(data)} bytes, more than one per "
                         f"{JSON_DENSITY} bytes: not parsed")
    return orjson.loads(data)
