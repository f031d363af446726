"""Worker processes and the running Merkle log: blocks checked in order, with a pool or without.

Part of app.proof.verify_bundle (see its docstring; docs/proof.md)."""
from __future__ import annotations

import bisect
import os
import zipfile
from collections import deque
from typing import Any

from app.proof import merkle
from app.proof.bundle_events import Block, Checker
from app.proof.bundle_format import CHECKPOINTS, EVENTS, MAX_JOBS, PARALLEL_FROM

_worker: Checker | None = None


def _init_worker(checker: Checker) -> None:
    global _worker
    _worker = checker


def _work(data: bytes, first_line: int, targets: list[int]) -> Block:
    assert _worker is not None
    return _worker.block(data, first_line, targets)


def _ahead(blocks: Any, depth: int = 2) -> Any:
    """`blocks`, produced by a thread of their own up to `depth` ahead: inflating, the CRC and the
    SHA-256 of the member run outside the GIL, beside the checks."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(depth)
    done = object()
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer is gone

    def produce() -> None:
        try:
            for item in blocks:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(exc)

    thread = threading.Thread(target=produce, name="verify-bundle-reader", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


class _Log:
    """The leaves so far as complete subtrees, one per 1-bit of their count (a binary counter), blocks
    of them pushed in file order: the root at any size is the right-to-left fold, so every
    checkpoint's root costs O(log n) and the whole pass O(n)."""

    def __init__(self, targets: set[int]) -> None:
        self.size = 0
        self.stack: list[tuple[int, bytes]] = []
        self.targets = sorted(t for t in targets if t > 0)
        self.roots: dict[int, bytes] = {0: merkle.EMPTY_ROOT} if 0 in targets else {}

    def within(self, start: int, lines: int) -> list[int]:
        """The target sizes in (start, start + lines]: those the leaves of a block reach."""
        return self.targets[bisect.bisect_right(self.targets, start):bisect.bisect_right(self.targets, start + lines)]

    @staticmethod
    def _push(stack: list[tuple[int, bytes]], pieces: list[tuple[int, bytes]]) -> None:
        node = merkle.node_hash
        for level, h in pieces:
            while stack and stack[-1][0] == level:
                h = node(stack.pop()[1], h)
                level += 1
            stack.append((level, h))

    @staticmethod
    def _fold(stack: list[tuple[int, bytes]]) -> bytes:
        h = stack[-1][1]
        for _, left in reversed(stack[:-1]):
            h = merkle.node_hash(left, h)
        return h

    def add(self, block: Block, lines: int) -> None:
        for size, pieces in block.roots.items():
            stack = list(self.stack)
            self._push(stack, pieces)
            self.roots[size] = self._fold(stack)
        self._push(self.stack, block.pieces)
        self.size += lines


def _run(checker: Checker, blocks: Any, pool: Any, within: Any, jobs: int) -> Any:
    """(result, number of lines) of each block in file order; with a pool, checked by its worker
    processes, at most 2 per worker in flight (memory stays bounded whatever the size).
    `within(start, lines)`: the checkpoint sizes ending in the block."""
    if pool is None:
        for data, line, lines in blocks:
            yield checker.block(data, line, within(line - 1, lines)), lines
        return
    pending: deque = deque()
    for data, line, lines in blocks:
        pending.append((pool.apply_async(_work, (data, line, within(line - 1, lines))), lines))
        if len(pending) >= 2 * jobs:
            task, n = pending.popleft()
            yield task.get(), n
    while pending:
        task, n = pending.popleft()
        yield task.get(), n


def _jobs(zf: zipfile.ZipFile, jobs: int | None) -> int:
    """Worker processes: as asked, else one per CPU for a large bundle and none for a small one."""
    if jobs is not None:
        return jobs
    sizes = {info.filename: info.file_size for info in zf.infolist()}
    large = sizes.get(EVENTS, 0) >= PARALLEL_FROM or sizes.get(CHECKPOINTS, 0) >= PARALLEL_FROM // 8
    if not large:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cpus, MAX_JOBS)
