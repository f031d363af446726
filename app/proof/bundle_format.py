"""The bundle format: member names, size limits and the expected shape of an event line.

Part of app.proof.verify_bundle (see its docstring; docs/proof.md)."""
from __future__ import annotations

import re
from operator import itemgetter

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
# The catalog's history (issue 11): in bundles made since; a bundle without it is still whole.
CATALOG = "catalog.json"
CATALOG_MIN_LINE = 100  # bytes: the shortest change (a tenant's baseline) has about 250

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
          CHECKPOINTS: 256 << 20, CATALOG: 64 << 20}  # inflated bytes of each member; events.ndjson: no fixed limit, but
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
