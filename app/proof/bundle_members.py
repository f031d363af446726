"""Reading and checking each member of a bundle (manifest, jwks, notices, disclosures, checkpoints, events).

Part of app.proof.verify_bundle (see its docstring; docs/proof.md)."""
from __future__ import annotations

import zipfile
from collections import Counter
from typing import Any

import orjson

from app.core.hashing import canonical_json, sha256_hex
from app.proof.bundle_events import _CHAIN_LEGACY_AFTER_V2, _LEGACY_AFTER_V2, Checker
from app.proof.bundle_format import (
    _HEX64,
    CATALOG,
    CATALOG_MIN_LINE,
    DISCLOSURES,
    EVENTS,
    FORMAT,
    JWKS,
    MANIFEST,
    MAX_LISTED,
    MEMBERS,
    NOTICES,
)
from app.proof.bundle_result import Break, Result, Unreadable, _cut, _short
from app.proof.bundle_workers import _ahead, _Log, _run
from app.proof.bundle_zip import _blocks, _check_sizes, _json, _Member
from app.proof.bundle_checkpoints import _Checkpoints


class _Verification(_Checkpoints):
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

    # -- the catalog's history, notices, disclosures

    def catalog(self) -> None:
        """catalog.json, when the bundle has it: a JSON array laid out one change per line (as written),
        each an object naming what changed, how and when; its digest is checked by `read`. Read a line
        at a time: a hostile one of a million empty objects costs no more than its bytes. What the
        changes say is the service's record of its catalog, not proof: the events' hashes bind the
        wording shown, whatever this says."""
        data = self.read(CATALOG)
        if data is None:
            return
        lines = data.rstrip(b"\n").split(b"\n")
        if lines[:1] != [b"["] or lines[-1:] != [b"]"] or len(lines) > len(data) // CATALOG_MIN_LINE + 2:
            self.result.add("malformed_member", "not a JSON array of catalog changes, one per line", file=CATALOG)
            return
        for n, line in enumerate(lines[1:-1]):
            try:
                item = orjson.loads(line[:-1] if line.endswith(b",") else line)
            except orjson.JSONDecodeError:
                item = None
            if not isinstance(item, dict) or not all(isinstance(item.get(k), str)
                                                     for k in ("entity", "entity_id", "op", "changed_at")):
                self.result.add("malformed_member", f"entry {n} is not a change (entity, entity_id, op and "
                                                    "changed_at as text)", file=CATALOG)

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

    # -- events

    def events(self, checker: Checker, log: _Log, pool: Any, jobs: int, block_size: int) -> dict[str, int]:
        r = self.result
        counts = {"events": 0, "duty_records": 0, "chain_v1_events": 0, "subjects": 0}
        if EVENTS not in self.names:
            return counts
        # subject key -> (last seq, last hash, last recorded_at, a chain version 2 event seen)
        chains: dict[Any, tuple] = {}
        last_index: int | None = None
        v2_seen = False  # a chain version 2 leaf so far, in log order
        with _Member(self.zf, EVENTS) as member:
            blocks = _ahead(_blocks(member, EVENTS, block_size))
            for block, lines in _run(checker, blocks, pool, log.within, jobs):
                counts["events"] += block.events
                counts["duty_records"] += block.duty_records
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
