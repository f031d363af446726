"""Verify an audit bundle offline: anyone can recompute (issue 8 point 4; docs/proof.md,
docs/proof-test-vectors.md).

Nothing here needs a database or the service's secrets: the standard library, orjson/rfc8785 (through
app.core.hashing), the Merkle tree (app.proof.merkle), JWS verification (app.proof.keys) and the
chain's pure functions (app.consents.chain).

What is checked, and the break kinds reported (`Break.kind`):

- the ZIP against its manifest: every member listed, present once, with its SHA-256 and size
  (`missing_member`, `unlisted_member`, `duplicate_member`, `member_hash`, `manifest`);
- every event's hash: SHA-256 of the RFC 8785 form of the printed event minus `hash` (chain version 2),
  or the v1 hash of its `legacy` payload, whose fields must agree with the printed event
  (`event_hash`, `legacy_mismatch`, `malformed_event`, `malformed_line`, `foreign_tenant`);
- every subject's chain, grouped by (tenant, subject_id): seq 1..n without a gap, each prev_hash the
  previous event's hash, recorded_at never earlier (`chain_seq`, `broken_link`, `time_reversed`);
- notices (SHA-256 of the body) and disclosures (SHA-256 of RFC 8785 of the content), and that every
  event cites one in the bundle (`notice_body`, `notice_missing`, `notice_mismatch`,
  `disclosure_content`, `disclosure_missing`);
- the Merkle log: log indexes 0..n-1 in order (`log_order`); every checkpoint's signature, with the
  bundle's jwks.json or ONLY the auditor's own key (`checkpoint_signature`, `checkpoint_fields`,
  `checkpoint_tenant`, `checkpoint_order`); the root of the first tree_size leaves at EVERY checkpoint
  (`checkpoint_root`, `checkpoint_beyond_events`), which proves every event's inclusion and the
  consistency of all bundled checkpoints; the last checkpoint covers every event (`uncovered_events`);
- optionally a checkpoint the auditor saved earlier: its signature, tenant, and the root of the
  bundle's first tree_size leaves (`trusted_signature`, `trusted_tenant`, `trusted_root`,
  `trusted_beyond_events`): a history rewritten since, even re-signed with the service's own key,
  fails here.

Speed: one pass over events.ndjson (inflated and hashed by a reader thread), cut into blocks of whole
lines; each block is checked on its own (in worker processes for a large bundle: `jobs`) and gives its
leaves as complete aligned subtrees and its subjects' first and last events, which are stitched here
in file order, so the roots at every checkpoint size come out of one running stack and the whole pass
is O(n). A line is checked on a fast path when its event has exactly the members and types of a chain
version 2 document (orjson's sorted output is then its RFC 8785 form); anything else goes through
app.core.hashing.canonical_json and is named. Checkpoint signatures are checked in batches beside
the events. Memory: one block per worker in flight, plus the last event of every subject.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import json
import os
import re
import time
import zipfile
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson

from app.consents import chain
from app.core.hashing import canonical_json, sha256_hex
from app.proof import keys, merkle

FORMAT = "consent-ledger-bundle/1"
CHECKPOINT_TYP = "consent-ledger-checkpoint+jwt"
EVENTS = "events.ndjson"
NOTICES = "notices.json"
DISCLOSURES = "disclosures.json"
CHECKPOINTS = "checkpoints.json"
JWKS = "jwks.json"
README = "README.md"
MANIFEST = "manifest.json"
MEMBERS = (EVENTS, NOTICES, DISCLOSURES, CHECKPOINTS, JWKS, README)

MAX_LISTED = 1000  # breaks listed in full; all are counted by kind
SIGNATURE_BATCH = 2000  # checkpoint signatures per worker task
BLOCK = 4 << 20  # bytes of events.ndjson per block
PARALLEL_FROM = 32 << 20  # events.ndjson this large (uncompressed) is checked by worker processes
MAX_JOBS = 8  # by default; past ~6 workers the reading process is the limit (bench/proof.py)

# The printed event (chain.document() + "hash"), member by member.
EVENT_KEYS = frozenset({
    "chain_version", "tenant", "subject_id", "id", "seq", "request_id", "purpose", "version", "action", "status",
    "previous_status", "collection_point", "notice", "disclosure_hash", "method", "actor", "evidence",
    "occurred_at", "recorded_at", "reason", "prev_hash", "hash"})
LINE_KEYS = frozenset({"log_index", "event"})
LEGACY_LINE_KEYS = frozenset({"log_index", "event", "legacy"})
# The printed event's members in RFC 8785 order, and every allowed combination of their types (7 may be null).
_FIELDS = tuple(sorted(EVENT_KEYS))
_fields = itemgetter(*_FIELDS)
_NULLABLE = frozenset({"collection_point", "disclosure_hash", "evidence", "notice", "prev_hash", "previous_status",
                       "reason"})
_TYPE = {"actor": dict, "chain_version": int, "evidence": dict, "notice": dict, "seq": int, "version": int}


def _signatures() -> frozenset:
    out = [()]
    for name in _FIELDS:
        kinds = [_TYPE.get(name, str)] + ([type(None)] if name in _NULLABLE else [])
        out = [sig + (k,) for sig in out for k in kinds]
    return frozenset(out)


_SIGNATURES = _signatures()
_actor = itemgetter("ref", "type")
_ACTOR = frozenset({(str, str), (type(None), str)})
_evidence = itemgetter("commitment", "id")
_notice = itemgetter("id", "key", "sha256", "superseded_at", "version")
_NOTICE = frozenset({(str, str, str, str, str), (str, str, str, type(None), str)})
_MAX_SAFE = 2**53 - 1
_STR = {str}
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z").fullmatch
_TIMES = re.compile(r"(?:\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z){2}").fullmatch  # two, back to back
_CACHE_MAX = 10_000
_HEX64 = re.compile(r"[0-9a-f]{64}").fullmatch


class Unreadable(Exception):
    """The input cannot be read as a bundle, key or checkpoint at all (exit status 2)."""


@dataclass
class Break:
    kind: str
    detail: str
    file: str | None = None
    line: int | None = None
    log_index: int | None = None
    tenant: str | None = None
    subject: str | None = None
    seq: int | None = None
    item: str | None = None  # an entry of a JSON member: "checkpoint 2 (tree_size 600)", "notice <id>"

    def where(self) -> str:
        parts = []
        if self.file:
            parts.append(f"{self.file}:{self.line}" if self.line is not None else self.file)
        if self.item:
            parts.append(self.item)
        if self.log_index is not None:
            parts.append(f"log index {self.log_index}")
        if self.subject is not None:
            parts.append(f"subject {self.tenant}/{self.subject}" + (f" seq {self.seq}" if self.seq is not None else ""))
        return ", ".join(parts) or "-"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "where": self.where(), "detail": self.detail, "file": self.file,
                "line": self.line, "log_index": self.log_index, "tenant": self.tenant, "subject": self.subject,
                "seq": self.seq, "item": self.item}


@dataclass
class Result:
    path: str
    tenant: str | None = None
    tree_size: int | None = None
    keys_from: str = "the bundle's jwks.json"
    counts: dict[str, int] = field(default_factory=dict)
    breaks: list[Break] = field(default_factory=list)
    by_kind: Counter = field(default_factory=Counter)
    trusted: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def valid(self) -> bool:
        return not self.by_kind

    @property
    def breaks_total(self) -> int:
        return sum(self.by_kind.values())

    def add(self, kind: str, detail: str, **where: Any) -> None:
        self.by_kind[kind] += 1
        if len(self.breaks) < MAX_LISTED:
            self.breaks.append(Break(kind, detail, **where))

    def as_dict(self) -> dict[str, Any]:
        events = self.counts.get("events", 0)
        return {"valid": self.valid, "bundle": self.path, "tenant": self.tenant, "tree_size": self.tree_size,
                "keys_from": self.keys_from, "counts": self.counts, "trusted_checkpoint": self.trusted,
                "breaks_total": self.breaks_total, "breaks_by_kind": dict(sorted(self.by_kind.items())),
                "breaks": [b.as_dict() for b in self.breaks], "breaks_listed": len(self.breaks),
                "seconds": round(self.seconds, 3),
                "events_per_second": round(events / self.seconds) if self.seconds and events else None}


# -- keys and checkpoints ----------------------------------------------------------------------------


def _public_jwk(x: str) -> dict[str, str]:
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": keys.thumbprint(x), "alg": keys.ALG, "use": "sig"}


def load_public_keys(path: Path) -> dict[str, list[dict[str, str]]]:
    """The auditor's own key set from a PEM public key, a JWK or a JWKS (Ed25519 only)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise Unreadable(f"--public-key: cannot read {path}: {exc.strerror or exc}") from None
    if data.lstrip().startswith(b"-----BEGIN"):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError):
            raise Unreadable(f"--public-key: {path} is not a PEM public key (a private key is not accepted: "
                             "give the public half)") from None
        if not isinstance(key, Ed25519PublicKey):
            raise Unreadable(f"--public-key: {path} is not an Ed25519 public key")
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"keys": [_public_jwk(base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii"))]}
    try:
        doc = json.loads(data)
    except ValueError:
        raise Unreadable(f"--public-key: {path} is neither a PEM public key nor JSON (JWK or JWKS)") from None
    entries = doc.get("keys") if isinstance(doc, dict) and "keys" in doc else [doc]
    if not isinstance(entries, list) or not entries:
        raise Unreadable(f"--public-key: {path} holds no key")
    out = []
    for n, jwk in enumerate(entries):
        if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" \
                or jwk.get("alg", keys.ALG) != keys.ALG or not isinstance(jwk.get("x"), str):
            raise Unreadable(f"--public-key: key {n} of {path} is not an Ed25519 (OKP) public JWK")
        if "d" in jwk:
            raise Unreadable(f"--public-key: key {n} of {path} is a private key; give the public JWK")
        try:
            raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32 or base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != jwk["x"]:
            raise Unreadable(f"--public-key: key {n} of {path}: x is not a base64url Ed25519 public key (32 bytes)")
        public = _public_jwk(jwk["x"])
        if jwk.get("kid", public["kid"]) != public["kid"]:
            raise Unreadable(f"--public-key: key {n} of {path}: kid is not its RFC 7638 thumbprint ({public['kid']})")
        out.append(public)
    return {"keys": out}


def load_trusted_checkpoint(path: Path) -> str:
    """The JWS of a checkpoint the auditor saved: a bare compact JWS, a checkpoint JSON object
    (CHECKPOINT_DIR/<tenant>/<size>.json, an API answer) or a `ledger.checkpoint` webhook body."""
    try:
        text = Path(path).read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise Unreadable(f"--trusted-checkpoint: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            raise Unreadable(f"--trusted-checkpoint: {path} is not JSON") from None
        for candidate in (doc, doc.get("data"), doc.get("checkpoint")):
            if isinstance(candidate, dict) and isinstance(candidate.get("jws"), str):
                return candidate["jws"]
        raise Unreadable(f"--trusted-checkpoint: {path} holds no \"jws\" (nor data.jws)")
    if text.count(".") != 2:
        raise Unreadable(f"--trusted-checkpoint: {path} is neither a compact JWS nor a checkpoint JSON")
    return text


def _unverified_payload(token: Any) -> dict[str, Any] | None:
    try:
        middle = token.split(".")[1]
        payload = orjson.loads(base64.urlsafe_b64decode(middle + "=" * (-len(middle) % 4)))
    except (AttributeError, IndexError, ValueError, binascii.Error):
        return None
    return payload if isinstance(payload, dict) else None


def _payload_ok(payload: dict[str, Any]) -> str | None:
    """Why a checkpoint payload is unusable, or None."""
    size, root = payload.get("tree_size"), payload.get("root_hash")
    if type(size) is not int or size < 0:
        return f"tree_size {size!r} is not a count"
    if not isinstance(root, str) or not _HEX64(root):
        return f"root_hash {root!r} is not 64 lowercase hex digits"
    return None


def _check_token(token: Any, keyset: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(payload, why the signature fails or None). The payload is read even when the signature fails,
    so its root can still be compared (and reported)."""
    try:
        return keys.verify(token, keyset, typ=CHECKPOINT_TYP), None
    except keys.ProofError as exc:
        return _unverified_payload(token), str(exc)


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
    #                 last seq, last hash, last recorded_at]
    chains: dict[Any, list[Any]] = field(default_factory=dict)
    breaks: list[tuple] = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)


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


def _shape_ok(ev: Any) -> bool:
    """The printed event has exactly its members, of their types (then orjson's sorted form IS its
    RFC 8785 form: ASCII member names, safe integers, no floats; see app/core/hashing.py)."""
    try:
        values = _fields(ev)
    except (KeyError, TypeError):
        return False
    if len(ev) != len(_FIELDS) or tuple(map(type, values)) not in _SIGNATURES:
        return False
    try:
        return _parts_ok(ev)
    except (KeyError, TypeError):
        return False


def _parts_ok(ev: dict[str, Any]) -> bool:
    """The nested members, numbers and instants of an event whose members have their types."""
    actor, evidence, notice = ev["actor"], ev["evidence"], ev["notice"]
    return (0 < ev["chain_version"] < 100 and 0 < ev["seq"] <= _MAX_SAFE and 0 <= ev["version"] <= _MAX_SAFE
            and len(actor) == 2 and tuple(map(type, _actor(actor))) in _ACTOR
            and (evidence is None or (len(evidence) == 2 and set(map(type, _evidence(evidence))) == _STR))
            and (notice is None or (len(notice) == 5 and tuple(map(type, _notice(notice))) in _NOTICE))
            and _TIME(ev["recorded_at"]) is not None and _TIME(ev["occurred_at"]) is not None)


def _legacy_time(value: Any) -> Any:
    """A v1 payload's isoformat instant in the printed form (for comparison only)."""
    if isinstance(value, str) and value.endswith("+00:00"):
        return value[:-6] + "Z"
    return value


def _legacy_disagrees(ev: dict[str, Any], legacy: dict[str, Any]) -> list[str]:
    """The members where a v1 payload and the printed event say different things."""
    notice = ev.get("notice") or {}
    actor = ev.get("actor") or {}
    pairs = [("id", ev.get("id"), legacy.get("id")), ("seq", ev.get("seq"), legacy.get("seq")),
             ("tenant", ev.get("tenant"), legacy.get("tenant_id")),
             ("request_id", ev.get("request_id"), legacy.get("request_id")),
             ("version", ev.get("version"), legacy.get("version")), ("action", ev.get("action"), legacy.get("action")),
             ("status", ev.get("status"), legacy.get("status")),
             ("previous_status", ev.get("previous_status"), legacy.get("previous_status")),
             ("notice.id", notice.get("id"), legacy.get("notice_id")),
             ("disclosure_hash", ev.get("disclosure_hash"), legacy.get("disclosure_hash")),
             ("method", ev.get("method"), legacy.get("method")),
             ("actor.type", actor.get("type"), legacy.get("actor_type")),
             ("actor.ref", actor.get("ref"), legacy.get("actor_ref")),
             ("occurred_at", ev.get("occurred_at"), _legacy_time(legacy.get("occurred_at"))),
             ("recorded_at", ev.get("recorded_at"), _legacy_time(legacy.get("recorded_at"))),
             ("reason", ev.get("reason"), legacy.get("reason")), ("prev_hash", ev.get("prev_hash"), legacy.get("prev_hash")),
             ("chain_version", ev.get("chain_version"), legacy.get("chain_version"))]
    return [name for name, printed, hashed in pairs if printed != hashed]


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
        events = legacy_count = 0
        index = ev_tenant = subject = seq = None

        def add(kind: str, detail: str) -> None:
            kinds[kind] += 1
            if len(breaks) < MAX_LISTED:
                breaks.append((kind, detail, line_no, index, ev_tenant, subject, seq))

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
            else:
                index = ev_tenant = subject = seq = None
                got = self._slow(raw, add)
                if got is None:
                    push(none_leaf)
                    continue
                index, h, ev_tenant, subject, seq, prev, recorded, notice, purpose, dh, leaf, legacy = got
                legacy_count += legacy
                if notice is not None and notice in notices:
                    notice = None  # cited and found: nothing to report
            events += 1
            push(leaf)
            if type(index) is not int:
                add("malformed_line", f"log_index {index!r} is not an integer")
                index = None
            else:
                if expected_index is None:
                    out.first_index = index
                elif index != expected_index:
                    add("log_order", f"log index {index} where {expected_index} was expected: a leaf is missing, "
                                     "repeated or out of place")
                expected_index = index + 1
                out.last_index = index
            if ev_tenant == tenant:
                key = subject
            else:
                add("foreign_tenant", f"an event of tenant {ev_tenant!r} in a bundle of {tenant!r}")
                key = (ev_tenant, subject)
            try:
                st = chains.get(key)
                if st is None:
                    chains[key] = [seq, prev, recorded, line_no, index, seq, h, recorded]
                else:
                    if seq != st[5] + 1:
                        add("chain_seq", f"seq {seq} follows seq {st[5]}")
                    if prev != st[6]:
                        add("broken_link", "prev_hash is not the hash of the subject's previous event")
                    if recorded < st[7]:
                        add("time_reversed", f"recorded_at {recorded} is before the previous event's {st[7]}")
                    st[5], st[6], st[7] = seq, h, recorded
            except TypeError as exc:  # a subject id or seq of a type a tampered line may hold
                add("malformed_event", f"subject_id, seq or recorded_at of a wrong type ({exc})")
            if notice is not None:  # a notice not (or not so) in notices.json
                known = self.by_id.get(notice[0])
                add("notice_missing" if known is None else "notice_mismatch",
                    f"notice {notice[0]} ({notice[1]} {notice[3]}, sha256 {notice[2]}) is not in {NOTICES}"
                    if known is None else f"the event cites notice {notice[0]} as {notice[1]} {notice[3]} sha256 "
                                          f"{notice[2]}; {NOTICES} has {known[1]} {known[3]} sha256 {known[2]}")
            if dh is not None and (purpose, dh) not in disclosures:
                add("disclosure_missing", f"no disclosure of purpose {purpose!r} with hash {dh} in {DISCLOSURES}")
        out.events, out.legacy = events, legacy_count
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
        ev = rec.get("event") if isinstance(rec, dict) else None
        if not isinstance(ev, dict):
            add("malformed_line", "no event object")
            return None
        h = ev.get("hash")
        version = ev.get("chain_version")
        legacy = 0
        if not (isinstance(h, str) and _HEX64(h)):
            add("malformed_event", f"hash {h!r} is not 64 lowercase hex digits")
        if version == 2:
            if set(rec) != LINE_KEYS:
                add("malformed_line", f"members {sorted(rec)} (a v2 event's line has event and log_index)")
            if not _shape_ok(ev):
                add("malformed_event", "not a chain version 2 document (its members or their types)")
            try:
                computed = sha256_hex(canonical_json({k: v for k, v in ev.items() if k != "hash"}))
            except Exception as exc:  # noqa: BLE001 - e.g. a number RFC 8785 cannot represent
                computed = f"(no RFC 8785 form: {exc})"
            if computed != h:
                add("event_hash", "the event does not hash to its hash: changed after it was recorded")
        elif version == 1:
            legacy = 1
            payload = rec.get("legacy")
            if set(rec) != LEGACY_LINE_KEYS or not isinstance(payload, dict):
                add("legacy_mismatch", "a chain version 1 event without its v1 payload (legacy)")
            else:
                try:
                    computed = chain.legacy_hash(payload)
                except (TypeError, ValueError) as exc:
                    computed = f"(not serialisable: {exc})"
                if computed != h:
                    add("event_hash", "the v1 payload does not hash to the event's hash")
                if disagree := _legacy_disagrees(ev, payload):
                    add("legacy_mismatch", f"the printed event and its v1 payload differ in {', '.join(disagree)}")
            if not _shape_ok(ev):
                add("malformed_event", "the printed event's members or their types are not an event's")
        else:
            add("malformed_event", f"chain_version {version!r} is not 1 or 2")
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
                _hashable(ev.get("recorded_at")), notice, _hashable(ev.get("purpose")), _hashable(dh), leaf, legacy)


def _hashable(value: Any) -> Any:
    """A value fit for a dict key or a comparison (tampered lines may hold objects anywhere)."""
    return value if value is None or isinstance(value, (str, int)) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _strict_b64u(text: str) -> bytes:
    """base64url without padding, in its one canonical form only (ValueError otherwise)."""
    raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text:
        raise ValueError("not canonical base64url")
    return raw


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a repeated member")
    return out


def _signature_failures(tokens: list[Any], keyset: dict[str, Any]) -> list[str | None]:
    """Why each checkpoint's JWS does not verify with `keyset` (None: it does).

    keys.verify decides. Checkpoints come by the hundred thousand, all with the same protected
    header, and its per-token work (header parsing, the key's thumbprint, PyJWT) costs more than the
    Ed25519 verification itself; so once keys.verify has accepted a token, a later token with the
    byte-identical header segment -- hence the same alg, typ and key -- is accepted here when its
    signature verifies with that key over the same signing input and its payload is a JSON object
    without repeated members: exactly what keys.verify would then check. Anything else, or any doubt,
    goes to keys.verify, whose verdict and message stand."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    accepted: dict[str, Any] = {}  # header segment -> the Ed25519 key keys.verify verified it with
    out: list[str | None] = []
    for token in tokens:
        if not isinstance(token, str):
            out.append("no JWS (jws)")
            continue
        head, _, rest = token.partition(".")
        key = accepted.get(head)
        if key is not None:
            try:
                payload_segment, signature_segment = rest.split(".")
                key.verify(_strict_b64u(signature_segment), f"{head}.{payload_segment}".encode("ascii"))
                if isinstance(json.loads(_strict_b64u(payload_segment), object_pairs_hook=_no_repeats), dict):
                    out.append(None)
                    continue
            except (ValueError, UnicodeError, InvalidSignature, binascii.Error):
                pass
        try:
            keys.verify(token, keyset, typ=CHECKPOINT_TYP)
        except keys.ProofError as exc:
            out.append(str(exc))
            continue
        out.append(None)
        if head not in accepted:
            try:
                kid = json.loads(_strict_b64u(head))["kid"]
                (jwk,) = [k for k in keyset["keys"] if isinstance(k, dict) and k.get("kid") == kid]
                accepted[head] = Ed25519PublicKey.from_public_bytes(_strict_b64u(jwk["x"]))
            except (ValueError, KeyError, TypeError, binascii.Error):
                pass  # an unusual (non-canonical) header: keys.verify checks each such token
    return out


class _Later:
    """A signature batch checked when asked (no worker processes)."""

    def __init__(self, tokens: list[Any], keyset: dict[str, Any]) -> None:
        self.tokens, self.keyset = tokens, keyset

    def get(self) -> list[str | None]:
        return _signature_failures(self.tokens, self.keyset)


_worker: Checker | None = None


def _init_worker(checker: Checker) -> None:
    global _worker
    _worker = checker


def _work(data: bytes, first_line: int, targets: list[int]) -> Block:
    assert _worker is not None
    return _worker.block(data, first_line, targets)


def _blocks(member: Any, digest: Any) -> Any:
    """(bytes of whole lines without the last newline, number of its first line, number of lines),
    reading `member` once and hashing it."""
    rest, line = b"", 1
    while chunk := member.read(BLOCK):
        digest.update(chunk)
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            rest = data
            continue
        rest = data[cut:]
        block = data[:cut - 1]
        lines = block.count(b"\n") + 1
        yield block, line, lines
        line += lines
    if rest:
        yield rest, line, rest.count(b"\n") + 1


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


class _Verification:
    def __init__(self, zf: zipfile.ZipFile, result: Result, keyset: dict[str, Any] | None,
                 trusted_jws: str | None) -> None:
        self.zf, self.result, self.keyset, self.trusted_jws = zf, result, keyset, trusted_jws
        self.listed: dict[str, dict[str, Any]] = {}

    # -- members

    def manifest(self) -> dict[str, Any]:
        r, names = self.result, self.zf.namelist()
        if len(names) != len(set(names)):
            for name, n in Counter(names).items():
                if n > 1:
                    r.add("duplicate_member", f"{name} is in the ZIP {n} times", file=name)
        if MANIFEST not in names:
            raise Unreadable(f"{r.path}: no {MANIFEST}: not a consent-ledger bundle")
        try:
            manifest = orjson.loads(self.zf.read(MANIFEST))
        except (orjson.JSONDecodeError, zipfile.BadZipFile, OSError) as exc:
            raise Unreadable(f"{r.path}: {MANIFEST} is unreadable: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            got = manifest.get("format") if isinstance(manifest, dict) else None
            raise Unreadable(f"{r.path}: format {got!r} is not {FORMAT}")
        r.tenant = manifest.get("tenant") if isinstance(manifest.get("tenant"), str) else None
        if r.tenant is None:
            r.add("manifest", "the manifest names no tenant", file=MANIFEST)
            r.tenant = ""
        r.tree_size = manifest.get("tree_size")
        files = manifest.get("files")
        if not isinstance(files, list):
            r.add("manifest", "the manifest lists no files", file=MANIFEST)
            files = []
        for entry in files:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                r.add("manifest", f"a file entry {entry!r} without a name", file=MANIFEST)
                continue
            self.listed[entry["name"]] = entry
            if entry["name"] not in names:
                r.add("missing_member", f"{entry['name']} is listed in the manifest but not in the ZIP", file=entry["name"])
        for name in MEMBERS:
            if name not in self.listed and name in names:
                r.add("unlisted_member", f"{name} is not listed in the manifest", file=name)
            elif name not in names and name not in self.listed:
                r.add("missing_member", f"{name} is missing", file=name)
        for name in set(names) - set(self.listed) - set(MEMBERS) - {MANIFEST}:
            r.add("unlisted_member", f"{name} is in the ZIP but not in the manifest", file=name)
        return manifest

    def _member_digest(self, name: str, sha256: str, size: int) -> None:
        entry = self.listed.get(name)
        if entry is None:
            return
        if entry.get("sha256") != sha256 or entry.get("size", size) != size:
            self.result.add("member_hash", f"SHA-256 {sha256} ({size} bytes); the manifest says "
                                           f"{entry.get('sha256')} ({entry.get('size')} bytes)", file=name)

    def read_json(self, name: str, default: Any) -> Any:
        if name not in self.zf.namelist():
            return default
        data = self.zf.read(name)
        self._member_digest(name, hashlib.sha256(data).hexdigest(), len(data))
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            self.result.add("malformed_member", f"not JSON: {exc}", file=name)
            return default

    # -- notices, disclosures

    def notices(self) -> dict[str, tuple]:
        out: dict[str, tuple] = {}
        items = self.read_json(NOTICES, [])
        if not isinstance(items, list):
            self.result.add("malformed_member", "not a list of notices", file=NOTICES)
            return out
        for n, item in enumerate(items):
            where = {"file": NOTICES, "line": None}
            try:
                label = f"notice {item['id']} ({item['key']} {item['version']})"
                if not isinstance(item["body"], str) or sha256_hex(item["body"]) != item["sha256"]:
                    self.result.add("notice_body", f"the body does not hash to its sha256 {item['sha256']}",
                                    item=label, **where)
                if item["id"] in out:
                    self.result.add("malformed_member", "listed twice", item=label, **where)
                out[item["id"]] = (item["id"], item["key"], item["sha256"], item["version"])
            except (KeyError, TypeError, AttributeError):
                self.result.add("malformed_member", f"entry {n} is not a notice (id, key, version, body, sha256)", **where)
        return out

    def disclosures(self) -> frozenset:
        out = set()
        items = self.read_json(DISCLOSURES, [])
        if not isinstance(items, list):
            self.result.add("malformed_member", "not a list of disclosures", file=DISCLOSURES)
            return frozenset()
        for n, item in enumerate(items):
            try:
                purpose, h = item["purpose"], item["hash"]
                if not isinstance(purpose, str) or not isinstance(h, str):
                    raise TypeError
                if sha256_hex(canonical_json(item["content"])) != h:
                    self.result.add("disclosure_content", f"the content does not hash to {h}", file=DISCLOSURES,
                                    item=f"disclosure of purpose {purpose!r}")
                out.add((purpose, h))
            except (KeyError, TypeError, ValueError, AttributeError):
                self.result.add("malformed_member", f"entry {n} is not a disclosure (purpose, hash, content)",
                                file=DISCLOSURES)
        return frozenset(out)

    # -- checkpoints

    def _checkpoint_items(self) -> Any:
        """The entries of checkpoints.json, streamed when it is laid out one per line (as bundles are
        written: hundreds of thousands of checkpoints need not be in memory at once), parsed whole
        otherwise. ("unparsable", reason) for an entry or a member that is not JSON."""
        if CHECKPOINTS not in self.zf.namelist():
            return
        digest, size = hashlib.sha256(), 0
        with self.zf.open(CHECKPOINTS) as member:
            head = member.readline() + member.readline()
            digest.update(head)
            size += len(head)
            first, _, second = head.partition(b"\n")
            second = second.strip()
            one_per_line = first.strip() == b"[" and (second == b"]" or _parses(second.removesuffix(b",")))
            if one_per_line:
                ended = comma = False
                for n, line in enumerate(_chain_lines(second, member, digest)):
                    text = line.strip()
                    size += len(line) if n else 0
                    if ended or not text:
                        if text:
                            yield ("unparsable", "text after the end of the array")
                        continue
                    if text == b"]":
                        ended = True
                        if comma:
                            yield ("unparsable", "a comma before the end of the array")
                        continue
                    if n and not comma:
                        yield ("unparsable", "entries not separated by a comma")
                    comma = text.endswith(b",")
                    try:
                        yield orjson.loads(text[:-1] if comma else text)
                    except orjson.JSONDecodeError:
                        yield ("unparsable", "an entry is not JSON")
                if not ended:
                    yield ("unparsable", "the array does not end")
            else:
                rest = member.read()
                digest.update(rest)
                size += len(rest)
                try:
                    items = orjson.loads(head + rest)
                except orjson.JSONDecodeError:
                    items = ("unparsable", "not JSON")
                if isinstance(items, list):
                    yield from items
                else:
                    yield items if isinstance(items, tuple) else ("unparsable", "not a list of checkpoints")
        self._member_digest(CHECKPOINTS, digest.hexdigest(), size)

    def checkpoints(self, submit: Any) -> tuple[list[tuple[str, int, str]], list[tuple[str, Any]]]:
        """(label, tree_size, root_hash) of every checkpoint whose payload can be read, in order, and
        (labels, signature check handle) per batch: `submit(tokens)` checks the signatures, here or in
        worker processes, while the events are checked; `signatures` reports them after."""
        r, tenant = self.result, self.result.tenant
        out: list[tuple[str, int, str]] = []
        batches: list[tuple[list[str], Any]] = []
        labels: list[str] = []
        tokens: list[Any] = []
        last_size = -1
        for n, item in enumerate(self._checkpoint_items()):
            if isinstance(item, tuple):
                r.add("malformed_member", item[1], file=CHECKPOINTS, item=f"checkpoint {n + 1}")
                continue
            token = item.get("jws") if isinstance(item, dict) else None
            payload = _unverified_payload(token)
            label = f"checkpoint {n + 1}" + (f" (tree_size {payload.get('tree_size')})" if payload else "")
            labels.append(label)
            tokens.append(token)
            if len(tokens) >= SIGNATURE_BATCH:
                batches.append((labels, submit(tokens)))
                labels, tokens = [], []
            if payload is None:
                continue  # its signature check says why
            if bad := _payload_ok(payload):
                r.add("checkpoint_fields", bad, file=CHECKPOINTS, item=label)
                continue
            if payload.get("tenant") != tenant:
                r.add("checkpoint_tenant", f"signed for tenant {payload.get('tenant')!r}", file=CHECKPOINTS, item=label)
            for name in ("tree_size", "root_hash", "issued_at"):
                if name in item and item[name] != payload.get(name):
                    r.add("checkpoint_fields", f"{name} {item[name]!r} is not the signed {payload.get(name)!r}",
                          file=CHECKPOINTS, item=label)
            if payload["tree_size"] <= last_size:
                r.add("checkpoint_order", f"does not come after tree_size {last_size}", file=CHECKPOINTS, item=label)
            last_size = max(last_size, payload["tree_size"])
            out.append((label, payload["tree_size"], payload["root_hash"]))
        if tokens:
            batches.append((labels, submit(tokens)))
        return out, batches

    def signatures(self, batches: list[tuple[list[str], Any]]) -> set[str]:
        """Report the checkpoints whose signature failed; the labels of those that verified."""
        good = set()
        for labels, handle in batches:
            for label, why in zip(labels, handle.get()):
                if why is None:
                    good.add(label)
                else:
                    self.result.add("checkpoint_signature", why, file=CHECKPOINTS, item=label)
        return good

    def trusted(self, keyset: dict[str, Any]) -> dict[str, Any] | None:
        if self.trusted_jws is None:
            return None
        r = self.result
        payload, why = _check_token(self.trusted_jws, keyset)
        if payload is None:
            r.add("trusted_signature", f"the trusted checkpoint is not a readable JWS ({why})", file="--trusted-checkpoint")
            return None
        if why is not None:
            r.add("trusted_signature", f"the trusted checkpoint: {why}", file="--trusted-checkpoint")
        if bad := _payload_ok(payload):
            r.add("trusted_signature", f"the trusted checkpoint: {bad}", file="--trusted-checkpoint")
            return None
        if payload.get("tenant") != r.tenant:
            r.add("trusted_tenant", f"the trusted checkpoint is of tenant {payload.get('tenant')!r}, the bundle of "
                                    f"{r.tenant!r}", file="--trusted-checkpoint")
        r.trusted = {"tenant": payload.get("tenant"), "tree_size": payload["tree_size"],
                     "root_hash": payload["root_hash"], "issued_at": payload.get("issued_at"),
                     "signature_valid": why is None}
        return payload

    # -- events

    def events(self, checker: Checker, log: _Log, pool: Any, jobs: int) -> dict[str, int]:
        r = self.result
        counts = {"events": 0, "chain_v1_events": 0, "subjects": 0}
        if EVENTS not in self.zf.namelist():
            return counts
        digest, size = hashlib.sha256(), 0
        chains: dict[Any, tuple] = {}
        last_index: int | None = None
        with self.zf.open(EVENTS) as member:
            counted = _Counting(member)
            blocks = _ahead(_blocks(counted, digest))
            for block, lines in _run(checker, blocks, pool, log.within, jobs):
                counts["events"] += block.events
                counts["chain_v1_events"] += block.legacy
                r.by_kind.update(block.kinds)
                for kind, detail, line, index, tenant, subject, seq in block.breaks:
                    if len(r.breaks) < MAX_LISTED:
                        r.breaks.append(Break(kind, detail, EVENTS, line, index, tenant,
                                              None if subject is None else str(subject), seq))
                if block.first_index is not None:
                    expected = 0 if last_index is None else last_index + 1
                    if block.first_index != expected:
                        r.add("log_order", f"log index {block.first_index} where {expected} was expected: a leaf is "
                                           "missing, repeated or out of place", file=EVENTS, line=block.first_line,
                              log_index=block.first_index)
                    last_index = block.last_index
                for key, (fs, fp, ft, fl, fi, ls, lh, lt) in block.chains.items():
                    tenant, subject = key if type(key) is tuple else (r.tenant, key)
                    where = {"file": EVENTS, "line": fl, "log_index": fi, "tenant": tenant, "subject": str(subject),
                             "seq": fs}
                    before = chains.get(key)
                    if before is None:
                        if fs != 1:
                            r.add("chain_seq", f"the subject's first event has seq {fs}: events 1 to {fs - 1} are "
                                               "missing" if type(fs) is int else f"seq {fs!r}", **where)
                        if fp is not None:
                            r.add("broken_link", "the subject's first event has a prev_hash: its predecessor is "
                                                 "missing", **where)
                    else:
                        if fs != before[0] + 1:
                            r.add("chain_seq", f"seq {fs} follows seq {before[0]}", **where)
                        if fp != before[1]:
                            r.add("broken_link", "prev_hash is not the hash of the subject's previous event", **where)
                        if ft < before[2]:
                            r.add("time_reversed", f"recorded_at {ft} is before the previous event's {before[2]}",
                                  **where)
                    chains[key] = (ls, lh, lt)
                log.add(block, lines)
            size = counted.size
        self._member_digest(EVENTS, digest.hexdigest(), size)
        counts["subjects"] = len(chains)
        return counts


def _parses(text: bytes) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def _chain_lines(first: bytes, member: Any, digest: Any) -> Any:
    """`first` (already hashed), then the member's remaining lines, each hashed as it is read."""
    yield first
    for line in member:
        digest.update(line)
        yield line


class _Counting:
    """A reader that counts the bytes read through it."""

    def __init__(self, member: Any) -> None:
        self.member, self.size = member, 0

    def read(self, n: int) -> bytes:
        data = self.member.read(n)
        self.size += len(data)
        return data


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


def verify(path: Path, public_key: Path | None = None, trusted_checkpoint: Path | None = None, *,
           jobs: int | None = None) -> Result:
    """Check a bundle; every break is in the result (valid = none). Unreadable when the bundle, the key
    or the trusted checkpoint cannot be read at all. `jobs`: worker processes for the events (default:
    one per CPU for a large bundle, none for a small one)."""
    started = time.perf_counter()
    result = Result(path=str(path))
    own_keys = load_public_keys(public_key) if public_key is not None else None
    trusted_jws = load_trusted_checkpoint(trusted_checkpoint) if trusted_checkpoint is not None else None
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise Unreadable(f"{path}: not a readable ZIP file ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        with zf:
            run = _Verification(zf, result, own_keys, trusted_jws)
            manifest = run.manifest()
            bundle_keys = run.read_json(JWKS, {"keys": []})
            if README in zf.namelist():
                data = zf.read(README)
                run._member_digest(README, hashlib.sha256(data).hexdigest(), len(data))
            if own_keys is not None:
                keyset = own_keys
                result.keys_from = f"--public-key {public_key}"
            else:
                keyset = bundle_keys if isinstance(bundle_keys, dict) else {"keys": []}
            notices, disclosures = run.notices(), run.disclosures()
            checker = Checker(result.tenant or "", notices, disclosures)
            jobs = _jobs(zf, jobs)
            pool = None
            if jobs > 1:
                import multiprocessing

                # spawn: no fork of whatever threads the caller runs
                pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_init_worker, initargs=(checker,))
            try:
                if pool is None:
                    def submit(tokens: list[Any]) -> Any:
                        return _Later(tokens, keyset)
                else:
                    def submit(tokens: list[Any]) -> Any:
                        return pool.apply_async(_signature_failures, (tokens, keyset))
                checkpoints, batches = run.checkpoints(submit)
                trusted = run.trusted(keyset)
                targets = {size for _, size, _ in checkpoints}
                if trusted is not None:
                    targets.add(trusted["tree_size"])
                log = _Log(targets)
                counts = run.events(checker, log, pool, jobs)
                signed = run.signatures(batches)
            finally:
                if pool is not None:
                    pool.terminate()
                    pool.join()
    except zipfile.BadZipFile as exc:
        raise Unreadable(f"{path}: the ZIP is damaged ({exc})") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise Unreadable(f"{path}: cannot read ({exc})") from None

    n = log.size
    verified = 0
    for label, size, root in checkpoints:
        if size > n:
            result.add("checkpoint_beyond_events", f"signed for {size} events, but the bundle has only {n}: "
                                                   "leaves were removed", file=CHECKPOINTS, item=label)
        elif log.roots[size].hex() != root:
            result.add("checkpoint_root", f"the first {size} events give root {log.roots[size].hex()}; the checkpoint "
                                          f"signed {root}", file=CHECKPOINTS, item=label)
        elif label in signed:
            verified += 1
    last = checkpoints[-1][1] if checkpoints else 0
    if not checkpoints and n:
        result.add("uncovered_events", "the bundle has no readable checkpoint", file=CHECKPOINTS)
    elif n > last:
        result.add("uncovered_events", f"{n - last} events after the last checkpoint (tree_size {last}): no signature "
                                       "covers them", file=EVENTS, log_index=last)
    if checkpoints and manifest.get("root_hash") != checkpoints[-1][2]:
        result.add("manifest", f"the manifest says root_hash {manifest.get('root_hash')!r}; the last checkpoint signed "
                               f"{checkpoints[-1][2]}", file=MANIFEST)
    if isinstance(manifest.get("tree_size"), int) and manifest["tree_size"] != n:
        result.add("manifest", f"the manifest says tree_size {manifest['tree_size']}; events.ndjson has {n} events",
                   file=MANIFEST)
    if trusted is not None:
        size = trusted["tree_size"]
        if size > n:
            result.add("trusted_beyond_events", f"the trusted checkpoint covers {size} events; the bundle has only {n}: "
                                                "events it covered were removed", file="--trusted-checkpoint")
            result.trusted["consistent"] = False
        else:
            ok = log.roots[size].hex() == trusted["root_hash"]
            result.trusted["consistent"] = ok
            if not ok:
                result.add("trusted_root", f"the bundle's first {size} events give root {log.roots[size].hex()}; the "
                                           f"checkpoint you trusted says {trusted['root_hash']}: history it covered was "
                                           "rewritten", file="--trusted-checkpoint")
    result.counts = {**counts, "notices": len(notices), "disclosures": len(disclosures),
                     "checkpoints": sum(len(labels) for labels, _ in batches),
                     "checkpoints_verified": verified,
                     "leaves": n}
    result.seconds = time.perf_counter() - started
    return result
