"""The Merkle log's tree (RFC 9162): published test vectors, an exhaustive check against a naive
reference written from the RFC text, tampered proofs refused, and incremental node storage."""

from __future__ import annotations

import functools
import hashlib
import random

import pytest

from app.proof import merkle as m

# The classic RFC 6962 test data (certificate-transparency, Trillian, transparency-dev/merkle
# testonly/constants.go and proof/verify_test.go).
CT_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f",
)]
CT_ROOTS = [bytes.fromhex(h) for h in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
CT_NODES = {  # (level, index) -> hash, every complete subtree of the 8-leaf tree
    (0, 0): "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    (0, 1): "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    (0, 2): "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
    (0, 3): "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
    (0, 4): "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    (0, 5): "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
    (0, 6): "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
    (0, 7): "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    (1, 0): "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    (1, 1): "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    (1, 2): "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
    (1, 3): "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    (2, 0): "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    (2, 1): "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    (3, 0): "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}
# (leaf index, tree size, path) and (size1, size2, proof), transparency-dev/merkle verify_test.go
# (its inclusion vectors number leaves from 1; here they are 0-based indexes).
CT_INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (0, 1, []),
]
CT_CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")

# -- a naive reference, written from RFC 9162 2.1.1, 2.1.3.1 and 2.1.4.1 over one fixed leaf list ----

N = 70
LEAVES = [m.leaf_hash(i.to_bytes(2, "big") * (i % 5)) for i in range(N)]


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@functools.cache
def mth(lo: int, hi: int) -> bytes:
    if hi - lo == 0:
        return hashlib.sha256(b"").digest()
    if hi - lo == 1:
        return LEAVES[lo]
    k = _k(hi - lo)
    return hashlib.sha256(b"\x01" + mth(lo, lo + k) + mth(lo + k, hi)).digest()


def ref_path(i: int, lo: int, hi: int) -> list[bytes]:
    if hi - lo == 1:
        return []
    k = _k(hi - lo)
    if i < k:
        return ref_path(i, lo, lo + k) + [mth(lo + k, hi)]
    return ref_path(i - k, lo + k, hi) + [mth(lo, lo + k)]


def ref_subproof(size: int, lo: int, hi: int, whole: bool) -> list[bytes]:
    if size == hi - lo:
        return [] if whole else [mth(lo, hi)]
    k = _k(hi - lo)
    if size <= k:
        return ref_subproof(size, lo, lo + k, whole) + [mth(lo + k, hi)]
    return ref_subproof(size - k, lo + k, hi, False) + [mth(lo, lo + k)]


STORE = {(lv, j): mth(j << lv, (j + 1) << lv) for lv in range(N.bit_length()) for j in range(N >> lv)}


def getter(size: int, store: dict | None = None):
    """A `get` over stored nodes that refuses any node not complete within the first `size` leaves
    (one that did not exist yet when the tree had that size) and records what it was asked."""
    calls: list[tuple[int, int]] = []
    store = STORE if store is None else store

    def get(level: int, idx: int) -> bytes:
        assert (idx + 1) << level <= size, f"read ({level}, {idx}) beyond size {size}"
        calls.append((level, idx))
        return store[(level, idx)]

    return get, calls


def flipped(proof: list[bytes], i: int) -> list[bytes]:
    out = list(proof)
    out[i] = bytes([out[i][0] ^ 8]) + out[i][1:]
    return out


# -- (a) published vectors -------------------------------------------------------------------------


def test_ct_roots_and_nodes() -> None:
    hashes = [m.leaf_hash(d) for d in CT_LEAVES]
    for size, want in enumerate(CT_ROOTS):
        assert m.root(hashes[:size]) == want
    store = {(0, i): h for i, h in enumerate(hashes)}
    for level, idx, h in m.new_nodes(0, hashes, lambda lv, j: store[(lv, j)]):
        store[(level, idx)] = h
    assert {k: v.hex() for k, v in store.items()} == CT_NODES
    for size, want in enumerate(CT_ROOTS):
        assert m.root_from_nodes(size, getter(size, store)[0]) == want


def test_ct_inclusion_vectors() -> None:
    store = {k: bytes.fromhex(v) for k, v in CT_NODES.items()}
    for index, size, path in CT_INCLUSION:
        proof = m.inclusion_proof(index, size, getter(size, store)[0])
        assert [p.hex() for p in proof] == path
        leaf = m.leaf_hash(CT_LEAVES[index])
        assert m.verify_inclusion(leaf, index, size, proof, CT_ROOTS[size])
        # Trillian's corruptions: wrong index, wrong height, wrong leaf or root, garbage.
        for i, s, lf, r, p in [
            (index - 1, size, leaf, CT_ROOTS[size], proof), (index + 1, size, leaf, CT_ROOTS[size], proof),
            (index ^ 2, size, leaf, CT_ROOTS[size], proof), (index, size * 2, leaf, CT_ROOTS[size], proof),
            (index, size // 2, leaf, CT_ROOTS[size], proof), (index, size, SOME_HASH, CT_ROOTS[size], proof),
            (index, size, leaf, CT_ROOTS[0], proof), (index, size, leaf, SOME_HASH, proof),
            (index, size, leaf, CT_ROOTS[size], proof + [b""]), (index, size, leaf, CT_ROOTS[size], proof + [CT_ROOTS[size]]),
            (index, size, leaf, CT_ROOTS[size], [CT_ROOTS[size], *proof]), (index, size, leaf, CT_ROOTS[size], [b"", *proof]),
        ]:
            assert not m.verify_inclusion(lf, i, s, p, r), (index, size, i, s)


def test_ct_consistency_vectors() -> None:
    store = {k: bytes.fromhex(v) for k, v in CT_NODES.items()}
    for first, second, want in CT_CONSISTENCY:
        proof = m.consistency_proof(first, second, getter(second, store)[0])
        assert [p.hex() for p in proof] == want
        r1, r2 = CT_ROOTS[first], CT_ROOTS[second]
        assert m.verify_consistency(first, second, r1, r2, proof)
        if not proof:
            continue
        for f, s, a, b, p in [
            (first - 1, second, r1, r2, proof), (first + 1, second, r1, r2, proof), (first ^ 2, second, r1, r2, proof),
            (first, second * 2, r1, r2, proof), (first, second // 2, r1, r2, proof),
            (first, second, SOME_HASH, r2, proof), (first, second, r1, SOME_HASH, proof), (first, second, r2, r1, proof),
            (first, second, r1, r2, []), (first, second, r1, r2, proof + [r1]), (first, second, r1, r2, proof + [r2]),
            (first, second, r1, r2, [r1, *proof]), (first, second, r1, r2, [r2, *proof]), (first, second, r1, r2, [proof[0], *proof]),
            (first, second, r1, r2, proof[:-1]), (first, second, r1, r2, proof + [b""]),
        ]:
            assert not m.verify_consistency(f, s, a, b, p), (first, second, f, s)


def test_verifier_edge_cases() -> None:
    leaf = m.leaf_hash(b"data")
    assert m.verify_inclusion(leaf, 0, 1, [], leaf)
    for index, size in [(0, 0), (1, 0), (1, 1), (2, 1), (-1, 1)]:
        assert not m.verify_inclusion(leaf, index, size, [], leaf)
    assert not m.verify_inclusion(b"", 0, 1, [], b"")  # not a hash
    empty = m.EMPTY_ROOT
    assert m.verify_consistency(0, 0, empty, empty, [])
    assert m.verify_consistency(0, 5, empty, CT_ROOTS[5], [])
    assert not m.verify_consistency(0, 5, empty, CT_ROOTS[5], [empty])
    assert not m.verify_consistency(0, 5, SOME_HASH, CT_ROOTS[5], [])  # a size-0 tree has one root
    assert m.verify_consistency(3, 3, CT_ROOTS[3], CT_ROOTS[3], [])
    assert not m.verify_consistency(3, 3, CT_ROOTS[3], CT_ROOTS[4], [])
    assert not m.verify_consistency(3, 3, CT_ROOTS[3], CT_ROOTS[3], [empty])
    assert not m.verify_consistency(2, 1, CT_ROOTS[2], CT_ROOTS[1], [])
    assert not m.verify_consistency(1, 2, CT_ROOTS[1], CT_ROOTS[2], [])
    with pytest.raises(ValueError):
        m.inclusion_proof(5, 5, getter(5)[0])
    with pytest.raises(ValueError):
        m.consistency_proof(3, 2, getter(3)[0])
    assert m.consistency_proof(0, 5, getter(5)[0]) == [] == m.consistency_proof(5, 5, getter(5)[0])


# -- (b) every size and index up to N, against the reference --------------------------------------


def test_roots_every_size() -> None:
    for size in range(N + 1):
        get, calls = getter(size)
        assert m.root(LEAVES[:size]) == mth(0, size) == m.root_from_nodes(size, get)
        assert sorted(calls) == sorted(m.root_nodes(size))


def test_inclusion_every_index() -> None:
    for size in range(1, N + 1):
        top = mth(0, size)
        for index in range(size):
            get, calls = getter(size)
            proof = m.inclusion_proof(index, size, get)
            assert proof == ref_path(index, 0, size), (index, size)
            assert sorted(set(calls)) == sorted(m.inclusion_nodes(index, size))
            leaf = LEAVES[index]
            assert m.verify_inclusion(leaf, index, size, proof, top)
            bad = [(LEAVES[(index + 1) % N], index, size, proof, top), (leaf, index, size, proof, SOME_HASH),
                   (leaf, index, size, proof + [top], top), (leaf, index, size, [top, *proof], top)]
            bad += [(leaf, index, size, flipped(proof, i), top) for i in range(len(proof))]
            if proof:
                bad.append((leaf, index, size, proof[:-1], top))
            for wrong in {index - 1, index + 1, index ^ 1, index ^ 2} - {index}:
                bad.append((leaf, wrong, size, proof, top))
            # A proof for this size never proves inclusion in a tree of another size.
            for other in {size - 1, size + 1, size * 2, size // 2} - {size}:
                if index < other <= N:
                    bad.append((leaf, index, other, proof, mth(0, other)))
            for other in {size * 2, size // 2} - {size}:
                bad.append((leaf, index, other, proof, top))
            for args in bad:
                assert not m.verify_inclusion(*args), (index, size, args[1], args[2])


def test_consistency_every_pair() -> None:
    for second in range(1, N + 1):
        r2 = mth(0, second)
        for first in range(1, second + 1):
            get, calls = getter(second)
            proof = m.consistency_proof(first, second, get)
            assert proof == (ref_subproof(first, 0, second, True) if first < second else []), (first, second)
            assert sorted(set(calls)) == sorted(m.consistency_nodes(first, second))
            r1 = mth(0, first)
            assert m.verify_consistency(first, second, r1, r2, proof)
            if first == second:
                continue
            bad = [(first, second, r1, SOME_HASH, proof), (first, second, SOME_HASH, r2, proof),
                   (first, second, r2, r1, proof), (first, second, r1, r2, []),
                   (first, second, r1, r2, proof[:-1]), (first, second, r1, r2, proof + [r2]),
                   (first, second, r1, r2, [r1, *proof])]
            bad += [(first, second, r1, r2, flipped(proof, i)) for i in range(len(proof))]
            # The same proof never links two other sizes, given those sizes' own roots.
            for f2 in {first - 1, first + 1, first ^ 2} - {first}:
                if 0 < f2 <= second:
                    bad.append((f2, second, mth(0, f2), r2, proof))
            for s2 in {second - 1, second + 1, second * 2} - {second}:
                if first <= s2 <= N:
                    bad.append((first, s2, r1, mth(0, s2), proof))
            for args in bad:
                assert not m.verify_consistency(*args), (first, second, args[0], args[1])


# -- (c) storing nodes as the log grows ------------------------------------------------------------


def build(leaves: list[bytes], batches: list[int]) -> dict[tuple[int, int], bytes]:
    store: dict[tuple[int, int], bytes] = {}
    size = 0
    for count in batches:
        batch = leaves[size:size + count]
        needed = set(m.frontier_needed(size))
        asked: list[tuple[int, int]] = []

        def get(level: int, idx: int, asked: list = asked) -> bytes:
            asked.append((level, idx))
            return store[(level, idx)]

        new = m.new_nodes(size, batch, get)
        assert set(asked) <= needed and len(needed) <= size.bit_length()
        for level, idx, h in new:
            assert level >= 1 and size < (idx + 1) << level <= size + len(batch)
            assert (level, idx) not in store
            store[(level, idx)] = h
        store.update({(0, size + i): h for i, h in enumerate(batch)})
        size += len(batch)
    return store


def test_new_nodes_in_random_batches() -> None:
    leaves = [m.leaf_hash(i.to_bytes(4, "big")) for i in range(1000)]
    whole = build(leaves, [len(leaves)])
    complete = {(lv, j) for lv in range(11) for j in range(len(leaves) >> lv)}
    assert set(whole) == complete
    for seed in range(5):
        rng = random.Random(seed)
        batches = []
        while sum(batches) < len(leaves):
            batches.append(rng.choice([0, 1, 1, 2, 3, rng.randint(1, 70)]))
        store = build(leaves, batches)
        assert store == whole
        for size in range(0, len(leaves) + 1, 37):
            assert m.root_from_nodes(size, lambda lv, j, s=store: s[(lv, j)]) == m.root(leaves[:size])
    assert build(LEAVES, [N]) == STORE  # the reference's complete subtrees, exactly


def test_new_nodes_reads_only_what_it_merges() -> None:
    store = build(LEAVES, [N])
    assert m.new_nodes(6, [], getter(6)[0]) == []
    get, calls = getter(6)
    assert m.new_nodes(6, [LEAVES[6]], get) == [] and calls == []  # 7 leaves: no new pair
    get, calls = getter(7)
    new = m.new_nodes(7, [LEAVES[7]], get)
    assert calls == [(0, 6), (1, 2), (2, 0)] == m.frontier_needed(7)[::-1]
    assert new == [(1, 3, store[(1, 3)]), (2, 1, store[(2, 1)]), (3, 0, store[(3, 0)])]
