"""Verify an audit bundle offline: anyone can recompute (issue 8 point 4; docs/proof.md,
docs/proof-test-vectors.md).

Nothing here needs a database or the service's secrets: the standard library, orjson/rfc8785 (through
app.core.hashing), the Merkle tree (app.proof.merkle), JWS verification (app.proof.keys) and the
chain's pure functions (app.consents.chain).

What is checked, and the break kinds reported (`Break.kind`):

- the ZIP against its manifest: every member listed, present once, with its SHA-256 and size
  (`missing_member`, `unlisted_member`, `duplicate_member`, `member_hash`, `manifest`);
- every event's hash: SHA-256 of the RFC 8785 form of the printed event minus `hash` (chain version 2),
  or the v1 hash of its `legacy` payload, which has exactly the v1 members and agrees, value and JSON
  type, with every printed member it also determines (`event_hash`, `legacy_mismatch`,
  `malformed_event`, `malformed_line`, `foreign_tenant`);
- chain version 1 events only as the tenant's oldest history, since nothing but their hash (which
  anyone can compute) vouches for them: none after a version 2 leaf in the log (`legacy_after_v2`),
  none after a version 2 event in its subject's chain (`chain_legacy_after_v2`);
- every subject's chain, grouped by (tenant, subject_id): seq 1..n without a gap, each prev_hash the
  previous event's hash, recorded_at never earlier (`chain_seq`, `broken_link`, `time_reversed`);
- notices (SHA-256 of the body) and disclosures (SHA-256 of RFC 8785 of the content), and that every
  event cites one in the bundle (`notice_body`, `notice_missing`, `notice_mismatch`,
  `disclosure_content`, `disclosure_missing`);
- the entries of every JSON member, their shape included (`malformed_member`, `manifest`);
- the Merkle log: log indexes 0..n-1 in order (`log_order`); every checkpoint's signature, with ONLY
  the auditor's own keys (--public-key), else with ONLY the key that verified the auditor's trusted
  checkpoint (any other key: `untrusted_key`), else, with a warning, the bundle's own jwks.json
  (`checkpoint_signature`, `checkpoint_fields`, `checkpoint_tenant`, `checkpoint_order`); the root of
  the first tree_size leaves at EVERY checkpoint
  (`checkpoint_root`, `checkpoint_beyond_events`), which proves every event's inclusion and the
  consistency of all bundled checkpoints; the last checkpoint covers every event (`uncovered_events`);
- optionally a checkpoint the auditor saved earlier: its signature, tenant, and the root of the
  bundle's first tree_size leaves (`trusted_signature`, `trusted_tenant`, `trusted_root`,
  `trusted_beyond_events`): a history rewritten since, even re-signed with the service's own key,
  fails here.

Unreadable (exit 2), never a break: a bundle that is not a ZIP or has no manifest, and one past the
limits below (LIMITS, RATIO, LINE_MAX, MIN_LINE, JSON_DENSITY), which keep a small hostile ZIP from
costing much more time or memory than a real bundle of its size.

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
from datetime import datetime
from operator import itemgetter
from pathlib import Path
from typing import Any, Self

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

# What a bundle may cost to read: it comes from whoever made it, and a few kilobytes of ZIP can
# inflate to gigabytes. Past any of these the bundle is unreadable (exit 2), found before inflating
# anything when the ZIP's own directory declares it, else at the first chunk past it.
CHUNK = 1 << 20  # bytes inflated at a time from every member but events.ndjson (BLOCK)
LINE_MAX = 1 << 20  # bytes of one line of events.ndjson or checkpoints.json
LIMITS = {MANIFEST: 1 << 20, JWKS: 1 << 20, README: 1 << 20, NOTICES: 64 << 20, DISCLOSURES: 64 << 20,
          CHECKPOINTS: 256 << 20}  # inflated bytes of each member; events.ndjson: no fixed limit, but
WHOLE_JSON_MAX = 64 << 20  # checkpoints.json not laid out one per line is parsed whole: at most this
# ... events.ndjson and checkpoints.json may inflate to at most RATIO times their compressed size plus
# RATIO_SLACK (a bundle's are ~5 and ~2.5: hashes, UUIDs and signatures do not compress; a bomb's ~1000),
RATIO = {EVENTS: 64, CHECKPOINTS: 16}
RATIO_SLACK = 1 << 20
# ... and their lines, counted over every block, may not be shorter than MIN_LINE bytes on average
# (beyond LINE_SLACK lines): an event line has 600 bytes or more, a checkpoint line about 500, and a
# flood of empty lines would otherwise cost per line what real events cost.
MIN_LINE = 256
LINE_SLACK = 64
# A JSON member may hold at most one object or array per JSON_DENSITY bytes (beyond JSON_SLACK):
# parsed, a `[]` of 2 bytes costs ~60 bytes of memory.
JSON_DENSITY = 32
JSON_SLACK = 4096

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
    warnings: list[str] = field(default_factory=list)

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
                "keys_from": self.keys_from, "warnings": self.warnings, "counts": self.counts,
                "trusted_checkpoint": self.trusted,
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


LEGACY_KEYS = frozenset(chain.LEGACY_FIELDS) | {"chain_version"}


def _legacy_instant(value: Any) -> str | None:
    """A v1 payload's instant (ISO 8601 with an offset) in the printed form, None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        return None
    return None if instant.tzinfo is None else chain.format_time(instant)


def _legacy_disagrees(ev: dict[str, Any], legacy: dict[str, Any]) -> list[str]:
    """The printed members a v1 payload also determines where the two differ (value or JSON type):
    only these of a version 1 event are covered by its hash. Not covered: subject_id (the payload
    has the internal subject id), purpose, collection_point, the notice's key, version, sha256 and
    superseded_at (it has their ids), evidence."""
    notice, actor = ev.get("notice"), ev.get("actor")
    notice_id = notice.get("id") if isinstance(notice, dict) else notice
    actor_type, actor_ref = (actor.get("type"), actor.get("ref")) if isinstance(actor, dict) else (actor, actor)
    pairs = [("id", ev.get("id"), legacy.get("id")), ("seq", ev.get("seq"), legacy.get("seq")),
             ("tenant", ev.get("tenant"), legacy.get("tenant_id")),
             ("request_id", ev.get("request_id"), legacy.get("request_id")),
             ("version", ev.get("version"), legacy.get("version")), ("action", ev.get("action"), legacy.get("action")),
             ("status", ev.get("status"), legacy.get("status")),
             ("previous_status", ev.get("previous_status"), legacy.get("previous_status")),
             ("notice.id", notice_id, legacy.get("notice_id")),
             ("disclosure_hash", ev.get("disclosure_hash"), legacy.get("disclosure_hash")),
             ("method", ev.get("method"), legacy.get("method")),
             ("actor.type", actor_type, legacy.get("actor_type")), ("actor.ref", actor_ref, legacy.get("actor_ref")),
             ("occurred_at", ev.get("occurred_at"), _legacy_instant(legacy.get("occurred_at"))),
             ("recorded_at", ev.get("recorded_at"), _legacy_instant(legacy.get("recorded_at"))),
             ("reason", ev.get("reason"), legacy.get("reason")), ("prev_hash", ev.get("prev_hash"), legacy.get("prev_hash")),
             ("chain_version", ev.get("chain_version"), legacy.get("chain_version"))]
    out = [name for name, printed, hashed in pairs if type(printed) is not type(hashed) or printed != hashed]
    if set(legacy) != LEGACY_KEYS:
        out.append("the payload's members (" + ", ".join(
            [f"{_short(k)} unexpected" for k in sorted(set(legacy) - LEGACY_KEYS)]
            + [f"{k} missing" for k in sorted(LEGACY_KEYS - set(legacy))]) + ")")
    return out


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
        out.events, out.legacy, out.v2_seen = events, legacy_count, v2_seen
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
        if type(version) is not int:
            version = None  # (True == 1)
        if not (isinstance(h, str) and _HEX64(h)):
            add("malformed_event", f"hash {_short(h)} is not 64 lowercase hex digits")
        if version == 2:
            if set(rec) != LINE_KEYS:
                add("malformed_line", f"members {_short(sorted(rec))} (a v2 event's line has event and log_index)")
            if not _shape_ok(ev):
                add("malformed_event", "not a chain version 2 document (its members or their types)")
            try:
                computed = sha256_hex(canonical_json({k: v for k, v in ev.items() if k != "hash"}))
            except Exception as exc:  # noqa: BLE001 - e.g. a number RFC 8785 cannot represent
                computed = f"(no RFC 8785 form: {exc})"
            if computed != h:
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
        self.names = set(zf.namelist())
        self.listed: dict[str, dict[str, Any]] = {}
        self.anchor: str | None = None  # the kid that verified the trusted checkpoint
        self.untrusted: set[str] = set()  # labels of checkpoints reported as untrusted_key
        self.checkpoint_count = 0

    # -- members

    def manifest(self) -> dict[str, Any]:
        r, names = self.result, self.zf.namelist()
        if len(names) != len(set(names)):
            for name, n in Counter(names).items():
                if n > 1:
                    r.add("duplicate_member", f"{name} is in the ZIP {n} times", file=name)
        if MANIFEST not in names:
            raise Unreadable(f"{r.path}: no {MANIFEST}: not a consent-ledger bundle")
        _check_sizes(self.zf)
        with _Member(self.zf, MANIFEST) as member:
            data = member.read_all()
        try:
            manifest = _json(MANIFEST, data)
        except orjson.JSONDecodeError as exc:
            raise Unreadable(f"{r.path}: {MANIFEST} is unreadable: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            got = manifest.get("format") if isinstance(manifest, dict) else None
            raise Unreadable(f"{r.path}: format {_short(got)} is not {FORMAT}")
        r.tenant = manifest.get("tenant") if isinstance(manifest.get("tenant"), str) else None
        if r.tenant is None:
            r.add("manifest", "the manifest names no tenant", file=MANIFEST)
            r.tenant = ""
        r.tree_size = manifest.get("tree_size")
        if type(r.tree_size) is not int or r.tree_size < 0:
            r.add("manifest", f"tree_size {_short(r.tree_size)} is not a count", file=MANIFEST)
            r.tree_size = None
        root = manifest.get("root_hash")
        if root is not None and not (isinstance(root, str) and _HEX64(root)):
            r.add("manifest", f"root_hash {_short(root)} is neither null nor 64 lowercase hex digits", file=MANIFEST)
        files = manifest.get("files")
        if not isinstance(files, list):
            r.add("manifest", "the manifest lists no files", file=MANIFEST)
            files = []
        for n, entry in enumerate(files):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                r.add("manifest", f"file entry {n} ({_short(entry)}) has no name", file=MANIFEST)
                continue
            name = entry["name"]
            if not isinstance(entry.get("sha256"), str) or type(entry.get("size")) is not int:
                r.add("manifest", f"the entry of {_short(name)} has no sha256 (text) and size (an integer)",
                      file=MANIFEST)
            if name in self.listed:
                r.add("manifest", f"{_short(name)} is listed twice", file=MANIFEST)
            self.listed[name] = entry
            if name not in self.names:
                r.add("missing_member", f"{_short(name)} is listed in the manifest but not in the ZIP", file=name)
        for name in MEMBERS:
            if name not in self.listed and name in self.names:
                r.add("unlisted_member", f"{name} is not listed in the manifest", file=name)
            elif name not in self.names and name not in self.listed:
                r.add("missing_member", f"{name} is missing", file=name)
        for name in self.names - set(self.listed) - set(MEMBERS) - {MANIFEST}:
            r.add("unlisted_member", f"{_short(name)} is in the ZIP but not in the manifest", file=name)
        return manifest

    def _member_digest(self, name: str, sha256: str, size: int) -> None:
        entry = self.listed.get(name)
        if entry is None:
            return
        if entry.get("sha256") != sha256 or entry.get("size", size) != size:
            self.result.add("member_hash", f"SHA-256 {sha256} ({size} bytes); the manifest says "
                                           f"{_short(entry.get('sha256'))} ({_short(entry.get('size'))} bytes)",
                            file=name)

    def read(self, name: str) -> bytes | None:
        """A small member whole (within its limit), its digest checked; None when it is not there."""
        if name not in self.names:
            return None
        with _Member(self.zf, name) as member:
            data = member.read_all()
        self._member_digest(name, member.hexdigest(), member.size)
        return data

    def read_json(self, name: str, default: Any) -> Any:
        data = self.read(name)
        if data is None:
            return default
        try:
            return _json(name, data)
        except orjson.JSONDecodeError as exc:
            self.result.add("malformed_member", f"not JSON: {exc}", file=name)
            return default

    def jwks(self) -> dict[str, Any]:
        """The bundle's key set: {"keys": [objects]}; anything else is named and taken as no key."""
        doc = self.read_json(JWKS, {"keys": []})
        keys_ = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(keys_, list):
            self.result.add("malformed_member", "not a JWKS (an object with a \"keys\" list)", file=JWKS)
            return {"keys": []}
        for n, jwk in enumerate(keys_):
            if not isinstance(jwk, dict) or not all(isinstance(jwk.get(k), str) for k in ("kty", "crv", "x", "kid")):
                self.result.add("malformed_member", f"key {n} is not a JWK with kty, crv, x and kid (text)", file=JWKS)
        return {"keys": [jwk for jwk in keys_ if isinstance(jwk, dict)]}

    # -- notices, disclosures

    def notices(self) -> dict[str, tuple]:
        out: dict[str, tuple] = {}
        items = self.read_json(NOTICES, [])
        if not isinstance(items, list):
            self.result.add("malformed_member", "not a list of notices", file=NOTICES)
            return out
        for n, item in enumerate(items):
            if not isinstance(item, dict):
                self.result.add("malformed_member", f"entry {n} is not a notice (an object)", file=NOTICES)
                continue
            wrong = [k for k in ("id", "key", "version", "body", "sha256") if not isinstance(item.get(k), str)]
            if wrong:
                self.result.add("malformed_member", f"entry {n} is not a notice: {', '.join(wrong)} missing or not text",
                                file=NOTICES)
                continue
            label = f"notice {_short(item['id'], quote=False)} ({_short(item['key'], quote=False)} " \
                    f"{_short(item['version'], quote=False)})"
            if sha256_hex(item["body"]) != item["sha256"]:
                self.result.add("notice_body", f"the body does not hash to its sha256 {_short(item['sha256'])}",
                                file=NOTICES, item=label)
            if item["id"] in out:
                self.result.add("malformed_member", "listed twice", file=NOTICES, item=label)
            out[item["id"]] = (item["id"], item["key"], item["sha256"], item["version"])
        return out

    def disclosures(self) -> frozenset:
        out = set()
        items = self.read_json(DISCLOSURES, [])
        if not isinstance(items, list):
            self.result.add("malformed_member", "not a list of disclosures", file=DISCLOSURES)
            return frozenset()
        for n, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("purpose"), str) \
                    or not isinstance(item.get("hash"), str) or not isinstance(item.get("content"), dict):
                self.result.add("malformed_member", f"entry {n} is not a disclosure (purpose and hash: text, content: "
                                                    "an object)", file=DISCLOSURES)
                continue
            purpose, h = item["purpose"], item["hash"]
            try:
                computed = sha256_hex(canonical_json(item["content"]))
            except Exception as exc:  # noqa: BLE001 - e.g. a number RFC 8785 cannot represent, nesting too deep
                self.result.add("malformed_member", f"entry {n}: the content has no RFC 8785 form "
                                                    f"({type(exc).__name__})", file=DISCLOSURES)
                continue
            if computed != h:
                self.result.add("disclosure_content", f"the content does not hash to {_short(h)}", file=DISCLOSURES,
                                item=f"disclosure of purpose {_short(purpose)}")
            out.add((purpose, h))
        return frozenset(out)

    # -- checkpoints

    def _checkpoint_items(self) -> Any:
        """The entries of checkpoints.json, streamed when it is laid out one per line (as bundles are
        written: hundreds of thousands of checkpoints need not be in memory at once), parsed whole
        otherwise (at most WHOLE_JSON_MAX bytes). ("unparsable", reason) for an entry or a member that
        is not JSON."""
        if CHECKPOINTS not in self.names:
            return
        with _Member(self.zf, CHECKPOINTS) as member:
            head = b""
            while head.count(b"\n") < 2 and len(head) <= 2 * LINE_MAX and (chunk := member.read(CHUNK)):
                head += chunk
            first, _, after = head.partition(b"\n")
            second = after.partition(b"\n")[0].strip()
            one_per_line = first.strip() == b"[" and (second == b"]" or _parses(second.removesuffix(b",")))
            if one_per_line:
                lines = (line for block, _, _ in _blocks(member, CHECKPOINTS, CHUNK, head)
                         for line in block.split(b"\n"))
                next(lines)  # "["
                ended = comma = False
                for n, line in enumerate(lines):
                    text = line.strip()
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
                data = head + member.read_all(WHOLE_JSON_MAX)
                try:
                    items = _json(CHECKPOINTS, data)
                except orjson.JSONDecodeError:
                    items = ("unparsable", "not JSON")
                if isinstance(items, list):
                    yield from items
                else:
                    yield items if isinstance(items, tuple) else ("unparsable", "not a list of checkpoints")
        self._member_digest(CHECKPOINTS, member.hexdigest(), member.size)

    def checkpoints(self, submit: Any) -> tuple[list[tuple[str, int, str]], list[tuple[str, Any]]]:
        """(label, tree_size, root_hash) of every checkpoint whose payload can be read, in order, and
        (labels, signature check handle) per batch: `submit(tokens)` checks the signatures, here or in
        worker processes, while the events are checked; `signatures` reports them after. With an
        anchor (the key of the trusted checkpoint, no --public-key), a checkpoint signed by any other
        key is untrusted_key."""
        r, tenant, anchor = self.result, self.result.tenant, self.anchor
        out: list[tuple[str, int, str]] = []
        batches: list[tuple[list[str], Any]] = []
        labels: list[str] = []
        tokens: list[Any] = []
        kids: dict[str, Any] = {}  # header segment -> its kid
        last_size = -1
        for n, item in enumerate(self._checkpoint_items()):
            if isinstance(item, tuple):
                r.add("malformed_member", item[1], file=CHECKPOINTS, item=f"checkpoint {n + 1}")
                continue
            token = item.get("jws") if isinstance(item, dict) else None
            payload = _unverified_payload(token)
            label = f"checkpoint {n + 1}" + (f" (tree_size {_short(payload.get('tree_size'))})" if payload else "")
            self.checkpoint_count += 1
            labels.append(label)
            tokens.append(token)
            if len(tokens) >= SIGNATURE_BATCH:
                batches.append((labels, submit(tokens)))
                labels, tokens = [], []
            if anchor is not None and isinstance(token, str):
                head = token.partition(".")[0]
                kid = kids.get(head, kids)
                if kid is kids:
                    kid = _header_kid(head)
                    if len(kids) < _CACHE_MAX:
                        kids[head] = kid
                if isinstance(kid, str) and kid != anchor:
                    self.untrusted.add(label)
                    r.add("untrusted_key", f"signed by key {_short(kid)}, not by {anchor!r}, the key that signed your "
                                           "trusted checkpoint: the bundle's own jwks.json cannot vouch for another "
                                           "key (if the service changed keys, give --public-key with every key it "
                                           "used)", file=CHECKPOINTS, item=label)
            if payload is None:
                continue  # its signature check says why
            if bad := _payload_ok(payload):
                r.add("checkpoint_fields", bad, file=CHECKPOINTS, item=label)
                continue
            if payload.get("tenant") != tenant:
                r.add("checkpoint_tenant", f"signed for tenant {_short(payload.get('tenant'))}", file=CHECKPOINTS,
                      item=label)
            for name in ("tree_size", "root_hash", "issued_at"):
                if name in item and item[name] != payload.get(name):
                    r.add("checkpoint_fields", f"{name} {_short(item[name])} is not the signed "
                                               f"{_short(payload.get(name))}", file=CHECKPOINTS, item=label)
            if payload["tree_size"] <= last_size:
                r.add("checkpoint_order", f"does not come after tree_size {last_size}", file=CHECKPOINTS, item=label)
            last_size = max(last_size, payload["tree_size"])
            out.append((label, payload["tree_size"], payload["root_hash"]))
        if tokens:
            batches.append((labels, submit(tokens)))
        return out, batches

    def signatures(self, batches: list[tuple[list[str], Any]]) -> set[str]:
        """Report the checkpoints whose signature failed; the labels of those that verified (never
        one signed by an untrusted key, already reported)."""
        good = set()
        for labels, handle in batches:
            for label, why in zip(labels, handle.get()):
                if label in self.untrusted:
                    continue
                if why is None:
                    good.add(label)
                else:
                    self.result.add("checkpoint_signature", why, file=CHECKPOINTS, item=label)
        return good

    def trusted(self, keyset: dict[str, Any]) -> dict[str, Any] | None:
        """The trusted checkpoint's payload, checked with `keyset`; `anchor` is then the kid that
        verified it."""
        if self.trusted_jws is None:
            return None
        r = self.result
        payload, why = _check_token(self.trusted_jws, keyset)
        if payload is None:
            r.add("trusted_signature", f"the trusted checkpoint is not a readable JWS ({why})", file="--trusted-checkpoint")
            return None
        if why is not None:
            r.add("trusted_signature", f"the trusted checkpoint: {why}", file="--trusted-checkpoint")
        else:
            self.anchor = _header_kid(self.trusted_jws.partition(".")[0])
        if bad := _payload_ok(payload):
            r.add("trusted_signature", f"the trusted checkpoint: {bad}", file="--trusted-checkpoint")
            return None
        if payload.get("tenant") != r.tenant:
            r.add("trusted_tenant", f"the trusted checkpoint is of tenant {_short(payload.get('tenant'))}, the bundle "
                                    f"of {r.tenant!r}", file="--trusted-checkpoint")
        r.trusted = {"tenant": payload.get("tenant"), "tree_size": payload["tree_size"],
                     "root_hash": payload["root_hash"], "issued_at": payload.get("issued_at"),
                     "signature_valid": why is None, "key": self.anchor}
        return payload

    # -- events

    def events(self, checker: Checker, log: _Log, pool: Any, jobs: int) -> dict[str, int]:
        r = self.result
        counts = {"events": 0, "chain_v1_events": 0, "subjects": 0}
        if EVENTS not in self.names:
            return counts
        # subject key -> (last seq, last hash, last recorded_at, a chain version 2 event seen)
        chains: dict[Any, tuple] = {}
        last_index: int | None = None
        v2_seen = False  # a chain version 2 leaf so far, in log order
        with _Member(self.zf, EVENTS) as member:
            blocks = _ahead(_blocks(member, EVENTS, BLOCK))
            for block, lines in _run(checker, blocks, pool, log.within, jobs):
                counts["events"] += block.events
                counts["chain_v1_events"] += block.legacy
                r.by_kind.update(block.kinds)
                for kind, detail, line, index, tenant, subject, seq in block.breaks:
                    if len(r.breaks) < MAX_LISTED:
                        r.breaks.append(Break(kind, detail, EVENTS, line, index, tenant,
                                              None if subject is None else str(subject), seq))
                if v2_seen and block.v1_head_count:
                    r.by_kind["legacy_after_v2"] += block.v1_head_count
                    for line, index, tenant, subject, seq in block.v1_head:
                        if len(r.breaks) < MAX_LISTED:
                            r.breaks.append(Break("legacy_after_v2", _LEGACY_AFTER_V2, EVENTS, line, index, tenant,
                                                  None if subject is None else str(subject), seq))
                v2_seen = v2_seen or block.v2_seen
                if block.first_index is not None:
                    expected = 0 if last_index is None else last_index + 1
                    if block.first_index != expected:
                        r.add("log_order", f"log index {block.first_index} where {expected} was expected: a leaf is "
                                           "missing, repeated or out of place", file=EVENTS, line=block.first_line,
                              log_index=block.first_index)
                    last_index = block.last_index
                for key, (fs, fp, ft, fl, fi, ls, lh, lt, has_v2, lead) in block.chains.items():
                    tenant, subject = key if type(key) is tuple else (r.tenant, key)
                    where = {"file": EVENTS, "line": fl, "log_index": fi, "tenant": _cut(tenant), "subject": str(_cut(subject)),
                             "seq": fs if type(fs) is int else None}
                    before = chains.get(key)
                    if before is None:
                        if fs != 1:
                            r.add("chain_seq", f"the subject's first event has seq {fs}: events 1 to {fs - 1} are "
                                               "missing" if type(fs) is int else f"seq {_short(fs)}", **where)
                        if fp is not None:
                            r.add("broken_link", "the subject's first event has a prev_hash: its predecessor is "
                                                 "missing", **where)
                    else:
                        if not (type(fs) is int and type(before[0]) is int and fs == before[0] + 1):
                            r.add("chain_seq", f"seq {_short(fs)} follows seq {_short(before[0])}", **where)
                        if fp != before[1]:
                            r.add("broken_link", "prev_hash is not the hash of the subject's previous event", **where)
                        if isinstance(ft, str) and isinstance(before[2], str) and ft < before[2]:
                            r.add("time_reversed", f"recorded_at {ft} is before the previous event's {before[2]}",
                                  **where)
                        if lead and before[3]:
                            r.add("chain_legacy_after_v2", _CHAIN_LEGACY_AFTER_V2 + (
                                f" ({lead} such events from here)" if lead > 1 else ""), **where)
                            r.by_kind["chain_legacy_after_v2"] += lead - 1
                    chains[key] = (ls, lh, lt, has_v2 or (before is not None and before[3]))
                log.add(block, lines)
        self._member_digest(EVENTS, member.hexdigest(), member.size)
        counts["subjects"] = len(chains)
        return counts


_LEGACY_AFTER_V2 = ("a chain version 1 event after a chain version 2 event in the log: version 1 events can only be "
                    "the tenant's oldest history (recorded before chain version 2 existed), so this one was made since")
_CHAIN_LEGACY_AFTER_V2 = ("a chain version 1 event after a chain version 2 event of the same subject: version 1 events "
                          "can only come first")


def _header_kid(segment: str) -> Any:
    """The kid of a JWS header segment (base64url JSON), None when there is none."""
    try:
        header = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error):
        return None
    return header.get("kid") if isinstance(header, dict) else None


def _cut(value: Any) -> Any:
    """A tenant or subject id kept with a break: itself, or its text (a tampered line's may be any JSON,
    kept as bytes by _hashable), cut short when long."""
    if value is None or type(value) is int:
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    elif not isinstance(value, str):
        value = repr(value)
    return value if len(value) <= 200 else _short(value, 200, quote=False)


def _short(value: Any, limit: int = 80, quote: bool = True) -> str:
    """A value an attacker may have made huge, for a message: its repr (or text), cut short."""
    text = repr(value) if quote or not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


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
        if info.filename in MEMBERS or info.filename == MANIFEST:
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
            bundle_keys = run.jwks()
            run.read(README)
            # Which keys the checkpoints are verified with: the auditor's own (--public-key), else the
            # one that verified the checkpoint the auditor saved (--trusted-checkpoint), an anchor no
            # key added to jwks.json can replace; only with neither, the bundle's own jwks.json.
            keyset = own_keys if own_keys is not None else bundle_keys
            trusted = run.trusted(keyset)
            if own_keys is not None:
                result.keys_from = f"--public-key {public_key}"
                run.anchor = None  # every key listed there is the auditor's own: no other anchor
            elif run.anchor is not None:
                keyset = {"keys": [k for k in bundle_keys["keys"] if k.get("kid") == run.anchor]}
                result.keys_from = f"the key that signed your trusted checkpoint ({run.anchor})"
            elif trusted_jws is None:
                result.warnings.append(
                    "the checkpoints were verified with the bundle's own jwks.json, which whoever made the bundle "
                    "chose: anyone able to change the bundle can add a key of his own to it and sign what he likes. "
                    "Give --public-key (the service's key, obtained elsewhere) or --trusted-checkpoint (a checkpoint "
                    "you saved earlier).")
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
    except (OSError, EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:
        # (NotImplementedError: a compression method zipfile lacks; RuntimeError: an encrypted member)
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
                     "checkpoints": run.checkpoint_count,
                     "checkpoints_verified": verified,
                     "leaves": n}
    result.seconds = time.perf_counter() - started
    return result
