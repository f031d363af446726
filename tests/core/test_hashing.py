"""canonical_json's fast path (orjson, sorted keys) must give exactly the bytes of RFC 8785."""

from __future__ import annotations

import random

import pytest
import rfc8785

from app.core.hashing import canonical_document, canonical_json

# Every C0 control, the JCS short escapes, quotes, DEL, Korean, the line separators, astral
# characters (surrogate pairs in UTF-16), and the BMP private-use area that sorts differently in
# UTF-16 than in code points.
ALPHABET = [chr(c) for c in range(0, 0x30)] + list('"\\/\x7f가힣ㄱ\u2028\u2029\ufeff\ue000\uffff') + \
    ["\U0001f600", "\U00010000", "a", "Z", "~"]


def _string(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12)))


def _value(rng: random.Random, depth: int = 0):
    pick = rng.randint(0, 9 if depth < 3 else 5)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.choice([0, -1, 1, 2**53 - 1, -(2**53 - 1), rng.randint(-10**9, 10**9)])
    if pick in (3, 4, 5):
        return _string(rng)
    if pick in (6, 7):
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    # keys: mostly ASCII (the fast path), sometimes not (must fall back and still be JCS)
    keys = [_string(rng) if rng.random() < 0.2 else rng.choice("abcdefghij") + str(rng.randint(0, 99))
            for _ in range(rng.randint(0, 5))]
    return {k: _value(rng, depth + 1) for k in keys}


def test_fast_path_equals_rfc8785_on_fuzzed_documents():
    rng = random.Random(8785)
    for _ in range(5000):
        value = {"doc": _value(rng), "s": _string(rng)}
        assert canonical_json(value) == rfc8785.dumps(value), value


def test_the_document_path_equals_rfc8785_on_flat_and_other_documents():
    rng = random.Random(9162)
    for _ in range(5000):
        # the flat shape of a ledger document (strings, nulls, integers, objects of strings), and
        # sometimes anything else, which must fall back
        value = {rng.choice("abcdefghij") + str(i): rng.choice([
            _string(rng), None, rng.choice([0, 7, 2**53 - 1, -(2**53 - 1)]),
            {"k" + str(j): rng.choice([_string(rng), None]) for j in range(rng.randint(0, 3))},
            _value(rng)]) for i in range(rng.randint(0, 8))}
        assert canonical_document(value) == rfc8785.dumps(value), value
    with pytest.raises(rfc8785.IntegerDomainError):
        canonical_document({"seq": 2**60})


def test_what_falls_back():
    # floats and non-ASCII keys are outside the fast path's subset; the answer is still JCS
    for value in ({"x": 1.5}, {"\U0001f600": 1, "\ue000": 2}, {"a": 1e21}):
        assert canonical_json(value) == rfc8785.dumps(value)
    # integers past 2^53 have no JCS form at all (IEEE 754): refused, never hashed some other way
    with pytest.raises(rfc8785.IntegerDomainError):
        canonical_json({"x": 2**60})
