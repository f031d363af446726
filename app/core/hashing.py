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
    # Loops, not all() over generators: this walks every event document of a verification (the
    # generators cost as much as the serialisation itself). Exact types first, then subclasses.
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return True
    if kind is dict:
        for k, v in value.items():
            if type(k) is not str or not k.isascii():
                return False
            if type(v) is not str and v is not None and not _fast(v):
                return False
        return True
    if kind is int:
        return -_MAX_SAFE <= value <= _MAX_SAFE
    if kind is list:
        for v in value:
            if type(v) is not str and v is not None and not _fast(v):
                return False
        return True
    if isinstance(value, (str, bool)):
        return True
    if isinstance(value, int):
        return -_MAX_SAFE <= value <= _MAX_SAFE
    if isinstance(value, dict):
        return all(type(k) is str and k.isascii() and _fast(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_fast(v) for v in value)
    return False


_ASCII_KEYS: set[tuple[Any, ...]] = set()  # key tuples already seen to be ASCII strings (documents share a few)


def _ascii_keys(value: dict) -> bool:
    keys = tuple(value)
    if keys in _ASCII_KEYS:
        return True
    if not all(type(k) is str and k.isascii() for k in keys):
        return False
    if len(_ASCII_KEYS) < 4096:
        _ASCII_KEYS.add(keys)
    return True


def _flat(value: dict) -> bool:
    """`_fast` for the shape of an event or duty document, in one pass without recursion: members
    that are strings, null, safe integers or objects of strings and nulls, under ASCII keys."""
    for v in value.values():
        kind = type(v)
        if kind is str or v is None:
            continue
        if kind is int:
            if not -_MAX_SAFE <= v <= _MAX_SAFE:
                return False
        elif kind is dict:
            for v2 in v.values():
                if type(v2) is not str and v2 is not None:
                    return False
            if not _ascii_keys(v):
                return False
        else:
            return False
    return _ascii_keys(value)


def canonical_document(value: dict) -> bytes:
    """canonical_json of an object, faster when it has the flat shape of a ledger document (every
    event of a verification goes through here); the same bytes either way."""
    if type(value) is dict and _flat(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass
    return canonical_json(value)


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
