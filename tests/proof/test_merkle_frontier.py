"""merkle.Frontier (the streamed right edge a tenant-wide verification replays the log through)
gives the RFC 9162 root at every size, however the leaves arrive in pieces."""

from __future__ import annotations

import hashlib
import random

from app.proof import merkle


def _leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(hashlib.sha256(str(i).encode()).digest()) for i in range(n)]


def test_root_at_every_size_is_the_rfc_root():
    leaves = _leaves(300)
    frontier = merkle.Frontier()
    assert frontier.root() == merkle.EMPTY_ROOT
    for n, leaf in enumerate(leaves, 1):
        frontier.extend([leaf])
        assert frontier.size == n
        assert frontier.root() == merkle.root(leaves[:n]), n


def test_pieces_of_any_length_give_the_same_roots():
    rng = random.Random(9162)
    leaves = _leaves(1000)
    frontier, at = merkle.Frontier(), 0
    while at < len(leaves):
        take = rng.choice([0, 1, 2, 3, 7, 64, 100, 255])
        frontier.extend(leaves[at:at + take])
        at = min(len(leaves), at + take)
        assert frontier.root() == merkle.root(leaves[:at])
