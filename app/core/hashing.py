"""Canonical JSON (RFC 8785, JCS) and SHA-256: disclosure hashes, the event chain, commitments.

RFC 8785 is the definition (the `rfc8785` package). It costs ~70 us for an event document, which
would cap an offline verification near 15,000 events/s, so documents inside the subset where
orjson's sorted output is byte-identical to JCS take that path (~4 us): object keys that are ASCII
strings (so UTF-8 byte order = UTF-16 code-unit order), integers within +-2^53, no floats, strings
orjson accepts (valid Unicode; both escape exactly the seven JCS short escapes and the other C0
controls as lowercase \\u00xx). Anything else goes to `rfc8785`; tests/core/test_hashing.py
compares the two on fuzzed documents.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import rfc8785

_MAX_SAFE = 2**53 - 1


def _fast(value: Any) -> bool:
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -_MAX_SAFE <= value <= _MAX_SAFE
    if isinstance(value, dict):
        return all(type(k) is str and k.isascii() and _fast(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_fast(v) for v in value)
    return False


def canonical_json(value: Any) -> bytes:
    """The one RFC 8785 byte string for `value` (str, int, bool, None, float, lists, dicts)."""
    if _fast(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:  # e.g. a lone surrogate: let rfc8785 decide
            pass
    return rfc8785.dumps(value)


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()
