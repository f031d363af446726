"""RFC 9162 (Certificate Transparency v2) Merkle tree over SHA-256, from stored subtrees.

What is stored: the leaf hashes (level 0, index i) and, for L >= 1, every COMPLETE ALIGNED subtree
(level L, index j) = MTH(leaves[j*2^L : (j+1)*2^L]). Such a node never changes once complete. Every
node of the RFC tree of ANY size n is either one of them or a right-edge range [a, n) whose length
splits (by its binary digits, largest first) into a few of them, so a root or proof for a past tree
size needs O(log n) point reads and never touches a node that did not exist at that size.

The `*_nodes` functions say which (level, idx) a computation will read, so a caller can fetch them
all in one query and hand the computation a dict lookup as `get`. Level 0 means a leaf hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

Get = Callable[[int, int], bytes]
Node = tuple[int, int]

_sha256 = hashlib.sha256
EMPTY_ROOT = _sha256(b"").digest()
HASH_SIZE = 32


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the prefix keeps a leaf from ever passing for an inner node."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of all the leaves, level by level (no recursion, no per-node objects).

    Pairing neighbours and carrying an odd last node up unchanged gives exactly the RFC shape
    (left subtree = largest power of two below n). Cost is one hashlib call per node (~0.7 us):
    1,000,000 leaves in ~0.75 s, 5,000,000 in ~4.6 s (CPython 3.11, OpenSSL 3.0, one core of an
    idle 2-core VM; up to 2x that with the other core busy). `new_nodes` over 1M: ~1.3 s.
    """
    level = list(leaf_hashes)
    if not level:
        return EMPTY_ROOT
    sha, prefix = _sha256, b"\x01"
    while len(level) > 1:
        carry = level[-1] if len(level) & 1 else None
        level = [sha(prefix + a + b).digest() for a, b in zip(level[0::2], level[1::2])]
        if carry is not None:
            level.append(carry)
    return level[0]


class Frontier:
    """A tree's right edge, streamed: the hashes of its complete subtrees (one per set bit of its
    size, largest first), grown leaf by leaf, for the root at any size on the way. What a
    verification replaying millions of leaves needs, without the (level, idx) of every node that
    `new_nodes` yields for storage."""

    def __init__(self) -> None:
        self.size = 0
        self._edge: list[bytes] = []

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        sha, prefix, edge, size = _sha256, b"\x01", self._edge, self.size
        for cur in leaf_hashes:
            carry = size
            while carry & 1:  # binary-counter carry: one merge per trailing one bit of the size
                cur = sha(prefix + edge.pop() + cur).digest()
                carry >>= 1
            edge.append(cur)
            size += 1
        self.size = size

    def root(self) -> bytes:
        """MTH of the leaves so far: the subtrees merged right to left (RFC 9162 2.1.1)."""
        if not self._edge:
            return EMPTY_ROOT
        cur = self._edge[-1]
        for left in reversed(self._edge[:-1]):
            cur = node_hash(left, cur)
        return cur


def _split(n: int) -> int:
    """The largest power of two strictly below n (n >= 2): the size of the left subtree."""
    return 1 << ((n - 1).bit_length() - 1)


def _pieces(start: int, end: int) -> list[Node]:
    """The complete aligned subtrees composing [start, end), largest first.

    Valid for every node range of an RFC tree: start is a multiple of a power of two >= the length.
    """
    out: list[Node] = []
    pos, size = start, end - start
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            if pos & ((1 << level) - 1):
                raise ValueError(f"[{start}, {end}) is not a node of any RFC 9162 tree")
            out.append((level, pos >> level))
            pos += 1 << level
    return out


def _range_hash(start: int, end: int, get: Get) -> bytes:
    """MTH(leaves[start:end]) folded from its pieces, right to left (the RFC tree's right edge)."""
    pieces = _pieces(start, end)
    h = get(*pieces[-1])
    for level, idx in reversed(pieces[:-1]):
        h = node_hash(get(level, idx), h)
    return h


def _nodes_of(ranges: list[tuple[int, int]]) -> list[Node]:
    return list(dict.fromkeys(node for start, end in ranges for node in _pieces(start, end)))


# -- appending -------------------------------------------------------------------------------------


def frontier_needed(old_size: int) -> list[Node]:
    """The stored nodes `new_nodes(old_size, ...)` may read: the old tree's right edge (one
    complete subtree per set bit of old_size). It reads only those whose parent completes."""
    if old_size < 0:
        raise ValueError("old_size must be >= 0")
    return _pieces(0, old_size)


def new_nodes(old_size: int, appended: Sequence[bytes], get: Get) -> list[tuple[int, int, bytes]]:
    """Every (level, idx, hash), level >= 1, of the complete aligned subtrees that the appended leaf
    hashes complete. Binary-counter carry: a stack of the right edge, merged as leaves arrive; an
    old node's hash is read (`get`) only when it is merged, so a caller need not fetch eagerly."""
    stack: list[tuple[int, int, bytes | None]] = [(lv, ix, None) for lv, ix in frontier_needed(old_size)]
    out: list[tuple[int, int, bytes]] = []
    index = old_size
    for h in appended:
        level, idx, cur = 0, index, h
        while stack and stack[-1][0] == level:
            _, left_idx, left = stack.pop()
            if left is None:
                left = get(level, left_idx)
            cur = node_hash(left, cur)
            level, idx = level + 1, idx >> 1
            out.append((level, idx, cur))
        stack.append((level, idx, cur))
        index += 1
    return out


# -- roots and proofs from stored nodes ------------------------------------------------------------


def root_nodes(size: int) -> list[Node]:
    """The stored nodes `root_from_nodes(size, ...)` reads."""
    return _pieces(0, size)


def root_from_nodes(size: int, get: Get) -> bytes:
    """MTH of the first `size` leaves (an old checkpoint's root), from O(log n) stored nodes."""
    if size < 0:
        raise ValueError("size must be >= 0")
    return _range_hash(0, size, get) if size else EMPTY_ROOT


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose MTHs form PATH(index, D[size]) (RFC 9162 2.1.3.1), in proof order."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    out: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
    out.reverse()  # the RFC lists the deepest sibling first
    return out


def inclusion_nodes(index: int, size: int) -> list[Node]:
    """The stored nodes `inclusion_proof(index, size, ...)` reads."""
    return _nodes_of(_inclusion_ranges(index, size))


def inclusion_proof(index: int, size: int, get: Get) -> list[bytes]:
    """The RFC 9162 audit path for leaf `index` in the tree of the first `size` leaves."""
    return [_range_hash(a, b, get) for a, b in _inclusion_ranges(index, size)]


def _consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """The leaf ranges whose MTHs form PROOF(first, D[second]) (RFC 9162 2.1.4.1), in proof order.
    Empty when first is 0 or equals second (nothing to prove)."""
    if not 0 <= first <= second:
        raise ValueError(f"no consistency proof from size {first} to size {second}")
    if first == 0 or first == second:
        return []
    out: list[tuple[int, int]] = []
    lo, hi, m, whole = 0, second, first, True  # SUBPROOF(m, D[lo:hi], whole)
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    if not whole:
        out.append((lo, hi))  # SUBPROOF(m, D[m], false) = {MTH(D[m])}
    out.reverse()
    return out


def consistency_nodes(first: int, second: int) -> list[Node]:
    """The stored nodes `consistency_proof(first, second, ...)` reads."""
    return _nodes_of(_consistency_ranges(first, second))


def consistency_proof(first: int, second: int, get: Get) -> list[bytes]:
    """The RFC 9162 consistency proof between the trees of the first `first` and `second` leaves."""
    return [_range_hash(a, b, get) for a, b in _consistency_ranges(first, second)]


# -- verifiers (RFC 9162 2.1.3.2 and 2.1.4.2, as written there) -------------------------------------


def _hashes_ok(*hashes: bytes) -> bool:
    return all(isinstance(h, bytes) and len(h) == HASH_SIZE for h in hashes)


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """True when `leaf` (a leaf HASH, `leaf_hash(data)`) is at `index` in the tree of `size`
    leaves whose root is `root`."""
    if not 0 <= index < size or not _hashes_ok(leaf, root, *proof):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]) -> bool:
    """True when the tree of `second` leaves (root `second_root`) extends the tree of `first`
    leaves (root `first_root`). From the empty tree: only an empty proof, and first_root must be
    the empty tree's root (a size-0 tree has no other)."""
    if not 0 <= first <= second or not _hashes_ok(first_root, second_root, *proof):
        return False
    if first == 0:
        return not proof and first_root == EMPTY_ROOT and (second > 0 or second_root == EMPTY_ROOT)
    if first == second:
        return not proof and first_root == second_root
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # first is an exact power of two: its root is a node of the tree
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == first_root and sr == second_root
