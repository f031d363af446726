"""Checking events.ndjson a block at a time: line shape, chain links, legacy events, leaf subtrees.

Part of app.proof.verify_bundle (see its docstring; docs/proof.md)."""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.consents import chain
from app.core.hashing import canonical_json, sha256_hex
from app.proof.bundle_format import (
    _ACTOR,
    _CACHE_MAX,
    _FIELDS,
    _HEX64,
    _MAX_SAFE,
    _NOTICE,
    _SIGNATURES,
    _TIMES,
    DISCLOSURES,
    LEGACY_LINE_KEYS,
    LINE_KEYS,
    MAX_LISTED,
    NOTICES,
    _actor,
    _evidence,
    _fields,
    _notice,
)
from app.proof.bundle_result import _cut, _short
from app.proof.bundle_shapes import LEGACY_KEYS, _legacy_disagrees, _legacy_instant, _parts_ok, _shape_ok  # noqa: F401

# -- the events: blocks of whole lines, each checked on its own ---------------------------------------


@dataclass
class Block:
    """What one block of events.ndjson says, for stitching in file order. Line k of the file is leaf
    k - 1 of the log, whatever it holds (an unreadable line stands for leaf data of 32 zero bytes)."""

    first_line: int = 0
    events: int = 0
    legacy: int = 0
    # The block's leaves as complete aligned subtrees, (level, hash) left to right, and the same for
    # the leaves up to each checkpoint size inside the block: _Log folds them onto the leaves before.
    pieces: list[tuple[int, bytes]] = field(default_factory=list)
    roots: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    first_index: int | None = None
    last_index: int | None = None
    # subject key -> [first seq, first prev_hash, first recorded_at, first line, first log index,
    #                 last seq, last hash, last recorded_at, a chain version 2 event seen,
    #                 chain version 1 events before the first version 2 one]
    chains: dict[Any, list[Any]] = field(default_factory=dict)
    breaks: list[tuple] = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)
    # Chain version 1 leaves may only come before every version 2 leaf of the log: whether the block
    # has a version 2 leaf, and its version 1 leaves before the first (line, index, tenant, subject,
    # seq; the first MAX_LISTED), which are breaks if an earlier block had one.
    v2_seen: bool = False
    v1_head: list[tuple] = field(default_factory=list)
    v1_head_count: int = 0
    duty_records: int = 0


def _subtrees(hashes: list[bytes], start: int, targets: list[int]) -> tuple[list, dict]:
    """The leaves of event hashes (32 bytes each) at positions start, start + 1, ... as complete
    aligned subtrees, left to right, (level, hash) each, the largest that fit: for the whole block and
    for each size in `targets`. Every complete aligned node inside the block is made once, level by
    level (a list comprehension per level: no per-node Python frame)."""
    sha = hashlib.sha256
    level = [sha(b"\x00" + h).digest() for h in hashes]
    levels, firsts = [level], [start]  # firsts[L]: the index, at level L, of levels[L][0]
    first = start
    while True:
        odd = first & 1  # a first node that is a right child has its left sibling before the block
        pairs = level[odd:]
        if len(pairs) < 2:
            break
        level = [sha(b"\x01" + a + b).digest() for a, b in zip(pairs[0::2], pairs[1::2])]
        first = (first + odd) >> 1
        levels.append(level)
        firsts.append(first)
    top = len(levels) - 1

    def pieces(end: int) -> list[tuple[int, bytes]]:
        out, pos = [], start
        while pos < end:
            lv = min((pos & -pos).bit_length() - 1, top) if pos else top
            while pos + (1 << lv) > end:
                lv -= 1
            out.append((lv, levels[lv][(pos >> lv) - firsts[lv]]))
            pos += 1 << lv
        return out

    return pieces(start + len(hashes)), {t: pieces(t) for t in targets}


class Checker:
    """Checks blocks of event lines against the bundle's notices and disclosures. Picklable (worker
    processes get one each)."""

    def __init__(self, tenant: str, notices: dict[str, tuple], disclosures: frozenset) -> None:
        self.tenant = tenant
        self.by_id = notices  # notice id -> (id, key, sha256, version)
        self.notices = frozenset(notices.values())
        self.disclosures = disclosures

    def block(self, data: bytes, first_line: int, targets: list[int] = ()) -> Block:
        """Check the lines of `data` (whole lines, without the last newline), the first being line
        `first_line` of events.ndjson; `targets`: the checkpoint sizes that end inside it.

        The fast path takes a line whose event has exactly the members and types of a chain version 2
        document (one signature lookup); anything else (chain version 1, a malformed or tampered
        line) goes through `_slow`, which names what is wrong. Both give the same values on."""
        out = Block(first_line=first_line)
        breaks, kinds, chains = out.breaks, out.kinds, out.chains
        hashes: list[bytes] = []  # the leaf data: each line's event hash, 32 bytes
        push = hashes.append
        tenant, notices, disclosures = self.tenant, self.notices, self.disclosures
        loads, dumps, sort_keys, sha256, fromhex = orjson.loads, orjson.dumps, orjson.OPT_SORT_KEYS, hashlib.sha256, \
            bytes.fromhex
        fields, signatures, nfields, times, max_safe = _fields, _SIGNATURES, len(_FIELDS), _TIMES, _MAX_SAFE
        actor_of, evidence_of, notice_of, actor_types, notice_types = _actor, _evidence, _notice, _ACTOR, _NOTICE
        text2 = (str, str)
        actors: set = set()  # (ref, type) pairs seen with valid types
        cited: dict[tuple, bool] = {}  # notice (id, key, sha256, superseded_at, version) -> in notices.json
        none_leaf = b"\x00" * 32  # the leaf data of a line without a readable hash
        expected_index = None
        line_no = first_line - 1
        events = legacy_count = duty_count = 0
        version = None
        index = ev_tenant = subject = seq = None
        v2_seen = False  # a chain version 2 leaf in the block so far
        v1_head = out.v1_head

        def add(kind: str, detail: str) -> None:
            kinds[kind] += 1
            if len(breaks) < MAX_LISTED:
                breaks.append((kind, detail, line_no, index if type(index) is int else None, _cut(ev_tenant),
                               _cut(subject), seq))

        for raw in data.split(b"\n"):
            line_no += 1
            fast = False
            try:
                rec = loads(raw)
                ev = rec["event"]
                index = rec["log_index"]
                values = fields(ev)
                if len(ev) == nfields and len(rec) == 2 and tuple(map(type, values)) in signatures:
                    (_, actor, version_, _, dh, evidence, h, _, _, notice, occurred, prev, _, purpose, _, recorded, _,
                     seq, _, subject, ev_tenant, version) = values
                    if version_ == 2 and 0 < seq <= max_safe and 0 <= version <= max_safe and len(actor) == 2 and (
                            evidence is None or (len(evidence) == 2 and tuple(map(type, evidence_of(evidence))) == text2)
                    ) and times(recorded + occurred) is not None:
                        a = actor_of(actor)
                        if a not in actors:
                            if tuple(map(type, a)) not in actor_types:
                                raise ValueError
                            if len(actors) < _CACHE_MAX:
                                actors.add(a)
                        if notice is not None:
                            n = notice_of(notice)
                            ok = cited.get(n)
                            if ok is None:
                                if len(notice) != 5 or tuple(map(type, n)) not in notice_types:
                                    raise ValueError
                                ok = (n[0], n[1], n[2], n[4]) in notices
                                if len(cited) < _CACHE_MAX:
                                    cited[n] = ok
                            notice = None if ok else (n[0], n[1], n[2], n[4])
                        fast = True
            except Exception:  # noqa: BLE001 - whatever it is, _slow names it
                pass
            if fast:
                del ev["hash"]
                leaf = sha256(dumps(ev, option=sort_keys)).digest()
                if leaf.hex() != h:
                    add("event_hash", "the event does not hash to its hash: changed after it was recorded")
                    leaf = fromhex(h) if _HEX64(h) else none_leaf
                v1, v2 = False, True
            else:
                index = ev_tenant = subject = seq = None
                try:
                    got = self._slow(raw, add)
                except Exception as exc:  # noqa: BLE001 - a line of a shape nothing here foresaw: named, not raised
                    add("malformed_line", f"not an event line ({type(exc).__name__})")
                    got = None
                if got is None:
                    push(none_leaf)
                    continue
                index, h, ev_tenant, subject, seq, prev, recorded, notice, purpose, dh, leaf, version = got
                v1, v2 = version == 1, version == 2
                duty_count += version == DUTY
                legacy_count += v1
                if notice is not None and notice in notices:
                    notice = None  # cited and found: nothing to report
            events += 1
            push(leaf)
            if type(index) is not int:
                add("malformed_line", f"log_index {_short(index)} is not an integer")
                index = None
            else:
                if expected_index is None:
                    out.first_index = index
                elif index != expected_index:
                    add("log_order", f"log index {index} where {expected_index} was expected: a leaf is missing, "
                                     "repeated or out of place")
                expected_index = index + 1
                out.last_index = index
            if v1:
                if v2_seen:
                    add("legacy_after_v2", _LEGACY_AFTER_V2)
                else:
                    out.v1_head_count += 1
                    if len(v1_head) < MAX_LISTED:
                        v1_head.append((line_no, index if type(index) is int else None, _cut(ev_tenant),
                                        _cut(subject), seq))
            elif v2:
                v2_seen = True
            if version == DUTY and not fast:
                if ev_tenant != tenant:
                    add("foreign_tenant", f"a duty record of tenant {_short(ev_tenant)} in a bundle of {tenant!r}")
                continue
            if ev_tenant == tenant:
                key = subject
            else:
                add("foreign_tenant", f"an event of tenant {_short(ev_tenant)} in a bundle of {tenant!r}")
                key = (ev_tenant, subject)
            try:
                st = chains.get(key)
                if st is None:
                    chains[key] = [seq, prev, recorded, line_no, index, seq, h, recorded, v2, +v1]
                else:
                    if v1:
                        if st[8]:
                            add("chain_legacy_after_v2", _CHAIN_LEGACY_AFTER_V2)
                        else:
                            st[9] += 1
                    elif v2:
                        st[8] = True
                    if seq != st[5] + 1:
                        add("chain_seq", f"seq {_short(seq)} follows seq {_short(st[5])}")
                    if prev != st[6]:
                        add("broken_link", "prev_hash is not the hash of the subject's previous event")
                    if recorded < st[7]:
                        add("time_reversed", f"recorded_at {_short(recorded, quote=False)} is before the previous "
                                             f"event's {_short(st[7], quote=False)}")
                    st[5], st[6], st[7] = seq, h, recorded
            except TypeError as exc:  # a subject id or seq of a type a tampered line may hold
                add("malformed_event", f"subject_id, seq or recorded_at of a wrong type ({_short(str(exc))})")
            if notice is not None:  # a notice not (or not so) in notices.json
                known = self.by_id.get(notice[0])
                i, k, sha, v = (_short(x, quote=False) for x in notice)
                add("notice_missing" if known is None else "notice_mismatch",
                    f"notice {i} ({k} {v}, sha256 {sha}) is not in {NOTICES}"
                    if known is None else f"the event cites notice {i} as {k} {v} sha256 {sha}; {NOTICES} has "
                                          f"{_short(known[1], quote=False)} {_short(known[3], quote=False)} sha256 "
                                          f"{_short(known[2], quote=False)}")
            if dh is not None and (purpose, dh) not in disclosures:
                add("disclosure_missing", f"no disclosure of purpose {_short(purpose)} with hash "
                                          f"{_short(dh, quote=False)} in {DISCLOSURES}")
        # `events` counted every leaf read; duty records are leaves, not events
        out.events, out.legacy, out.v2_seen, out.duty_records = events - duty_count, legacy_count, v2_seen, duty_count
        out.pieces, out.roots = _subtrees(hashes, first_line - 1, list(targets))
        return out

    def _slow(self, raw: bytes, add: Any) -> tuple | None:
        """The values `block` goes on with, from a line the fast path did not take, every problem
        reported through `add`; None when the line holds no event at all."""
        if not raw:
            add("malformed_line", "an empty line")
            return None
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError:
            add("malformed_line", "not JSON")
            return None
        if isinstance(rec, dict) and "duty_record" in rec:
            return _duty(rec, add)
        ev = rec.get("event") if isinstance(rec, dict) else None
        if not isinstance(ev, dict):
            add("malformed_line", "no event object")
            return None
        h = ev.get("hash")
        version = ev.get("chain_version")
        if type(version) is not int:
            version = None  # (True == 1)
        if not (isinstance(h, str) and _HEX64(h)):
            add("malformed_event", f"hash {_short(h)} is not 64 lowercase hex digits")
        if version == 2:
            if set(rec) != LINE_KEYS:
                add("malformed_line", f"members {_short(sorted(rec))} (a v2 event's line has event and log_index)")
            if not _shape_ok(ev):
                add("malformed_event", "not a chain version 2 document (its members or their types)")
            if _document_hash(ev) != h:
                add("event_hash", "the event does not hash to its hash: changed after it was recorded")
        elif version == 1:
            payload = rec.get("legacy")
            if set(rec) != LEGACY_LINE_KEYS or not isinstance(payload, dict):
                add("legacy_mismatch", "a chain version 1 event without its v1 payload (legacy)")
            else:
                try:
                    computed = chain.legacy_hash(payload)
                except (TypeError, ValueError, RecursionError) as exc:
                    computed = f"(not serialisable: {type(exc).__name__})"
                if computed != h:
                    add("event_hash", "the v1 payload does not hash to the event's hash")
                if disagree := _legacy_disagrees(ev, payload):
                    add("legacy_mismatch", f"the printed event and its v1 payload differ in {', '.join(disagree)}")
            if not _shape_ok(ev):
                add("malformed_event", "the printed event's members or their types are not an event's")
        else:
            add("malformed_event", f"chain_version {_short(ev.get('chain_version'))} is not 1 or 2")
        leaf = bytes.fromhex(h) if isinstance(h, str) and _HEX64(h) else b"\x00" * 32  # leaf data
        notice = ev.get("notice")
        if isinstance(notice, dict):
            notice = tuple(_hashable(notice.get(k)) for k in ("id", "key", "sha256", "version"))
        elif notice is not None:
            add("malformed_event", "notice is neither an object nor null")
            notice = None
        dh = ev.get("disclosure_hash")
        return (rec.get("log_index"), _hashable(h), _hashable(ev.get("tenant")), _hashable(ev.get("subject_id")),
                ev.get("seq") if type(ev.get("seq")) is int else None, _hashable(ev.get("prev_hash")),
                _hashable(ev.get("recorded_at")), notice, _hashable(ev.get("purpose")), _hashable(dh), leaf,
                version if version in (1, 2) else None)


def _document_hash(doc: dict[str, Any]) -> str:
    """SHA-256 of the RFC 8785 form of a printed event or duty record minus its `hash` (or why it
    has none: a tampered line may hold a number RFC 8785 cannot represent)."""
    try:
        return sha256_hex(canonical_json({k: v for k, v in doc.items() if k != "hash"}))
    except Exception as exc:  # noqa: BLE001
        return f"(no RFC 8785 form: {exc})"


DUTY = "duty"  # the `version` _slow gives a duty record's line
DUTY_KEYS = frozenset({"record", "record_version", "tenant", "subject_id", "id", "duty_id", "seq", "kind", "purpose",
                       "processor", "action", "status", "notify_at", "due_at", "detail", "cause_event_id",
                       "recorded_at", "prev_hash", "hash"})


def _duty(rec: dict[str, Any], add: Any) -> tuple:
    """A duty record's line (docs/duties.md): its document must hash to its hash, like an event's;
    its leaf is that hash. Its links to its duty's other records and to the event that caused it
    are checked by the service's verify (per subject), not here."""
    doc = rec["duty_record"]
    if not isinstance(doc, dict) or set(rec) != {"log_index", "duty_record"}:
        add("malformed_line", "a duty record's line has log_index and duty_record (an object)")
        return None
    h = doc.get("hash")
    if set(doc) != DUTY_KEYS or doc.get("record") != "duty" or doc.get("record_version") != 1:
        add("malformed_event", "not a duty record of record version 1 (its members)")
    if _document_hash(doc) != h:
        add("event_hash", "the duty record does not hash to its hash: changed after it was recorded")
    leaf = bytes.fromhex(h) if isinstance(h, str) and _HEX64(h) else b"\x00" * 32
    return (rec.get("log_index"), _hashable(h), _hashable(doc.get("tenant")), _hashable(doc.get("subject_id")),
            None, None, None, None, None, None, leaf, DUTY)


def _hashable(value: Any) -> Any:
    """A value fit for a dict key or a comparison (tampered lines may hold objects anywhere)."""
    return value if value is None or isinstance(value, (str, int)) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


_LEGACY_AFTER_V2 = ("a chain version 1 event after a chain version 2 event in the log: version 1 events can only be "
                    "the tenant's oldest history (recorded before chain version 2 existed), so this one was made since")
_CHAIN_LEGACY_AFTER_V2 = ("a chain version 1 event after a chain version 2 event of the same subject: version 1 events "
                          "can only come first")
