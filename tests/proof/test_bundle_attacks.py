"""verify-bundle against an attacker who makes the bundle (an outside review's findings): chain version 1
events forged where only old history may be, a key of his own added to jwks.json, ZIP bombs, and
members of any shape. Offline: bundles are made here, signed with throwaway keys, no database."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import time
import uuid
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import app.proof.verify_bundle as vb
from app.consents import chain
from app.core.hashing import canonical_json, sha256_hex
from app.proof import keys, merkle
from app.proof.bundle import BundleWriter
from app.proof.cli import main as cli
from app.proof.verify_bundle import Unreadable, verify

TYP = "consent-ledger-checkpoint+jwt"
TENANT = "old"
NOTICE_BODY = "개인정보 처리방침 (2024-01)\n"
NOTICE = {"id": str(uuid.UUID(int=500)), "key": "privacy-policy", "version": "2024-01", "title": "처리방침",
          "language": "ko", "body": NOTICE_BODY, "sha256": sha256_hex(NOTICE_BODY),
          "effective_at": "2024-01-01T00:00:00.000000Z", "published_at": "2024-01-01T00:00:00.000000Z"}
CONTENT = {"purpose": "문자 광고", "items": ["휴대전화번호"], "retention": "철회 시까지"}
DISCLOSURE = {"purpose": "marketing-sms", "hash": sha256_hex(canonical_json(CONTENT)), "content": CONTENT}


def _signer() -> keys.Signer:
    return keys.Signer(Ed25519PrivateKey.generate())


def _row(n: int, member: str, seq: int, prev: str | None, version: int) -> dict[str, Any]:
    """A stored event row (the columns chain.document and chain.legacy_payload read)."""
    t = datetime(2024, 3, 1, 9, 0, tzinfo=UTC) + timedelta(seconds=n, microseconds=123457 * n % 1000000)
    action = "granted" if seq % 2 else "withdrawn"
    v2 = version == 2
    return {"id": uuid.UUID(int=1000 + n), "tenant_id": TENANT, "subject_id": uuid.uuid5(uuid.NAMESPACE_URL, member),
            "seq": seq, "purpose_id": uuid.UUID(int=7), "version": seq, "action": action, "status": action,
            "previous_status": None if seq == 1 else ("withdrawn" if seq % 2 else "granted"),
            "collection_point_id": uuid.UUID(int=8), "notice_id": uuid.UUID(NOTICE["id"]),
            "disclosure_hash": DISCLOSURE["hash"], "method": "web", "actor_type": "subject", "actor_ref": None,
            "guardian": None, "ip": None if v2 else "198.51.100.1", "user_agent": None if v2 else "Mozilla/5.0",
            "occurred_at": t, "recorded_at": t, "request_id": uuid.UUID(int=5000 + n), "reason": None,
            "prev_hash": prev, "chain_version": version, "purpose_key": "marketing-sms", "collection_point_key": "signup",
            "notice_key": NOTICE["key"], "notice_version": NOTICE["version"], "notice_sha256": NOTICE["sha256"],
            "notice_superseded_at": None, "evidence_id": uuid.UUID(int=9000 + n) if v2 else None,
            "evidence_commitment": hashlib.sha256(b"%d" % n).hexdigest() if v2 else None}


def _events(plan: list[tuple[str, int]], tweak: Callable[[int, dict], None] | None = None) -> list[dict[str, Any]]:
    """The lines of events.ndjson for `plan`, (member id, chain version) in log order, each member's
    seq and prev_hash following on. `tweak(n, line)` may change line n before its hash is computed:
    the hash is then recomputed, as anyone forging an event would."""
    heads: dict[str, tuple[int, str | None]] = {}
    lines = []
    for n, (member, version) in enumerate(plan):
        seq, prev = heads.get(member, (0, None))
        row = _row(n, member, seq + 1, prev, version)
        line = {"log_index": n, "event": chain.document(row, tenant=TENANT, subject_ref=member)}
        if version == 1:
            line["legacy"] = chain.legacy_payload(row)
        if tweak is not None:
            tweak(n, line)
        line["event"]["hash"] = (chain.legacy_hash(line["legacy"]) if version == 1
                                 else chain.document_hash(line["event"]))
        heads[member] = (seq + 1, line["event"]["hash"])
        lines.append(line)
    return lines


def _checkpoint(lines: list[dict], size: int, signer: keys.Signer) -> dict[str, Any]:
    leaves = [merkle.leaf_hash(bytes.fromhex(line["event"]["hash"])) for line in lines[:size]]
    payload = {"tenant": TENANT, "tree_size": size, "root_hash": merkle.root(leaves).hex(),
               "issued_at": f"2024-06-01T00:00:{size % 60:02d}.000000Z"}
    return {**payload, "key_id": signer.kid, "jws": signer.sign(payload, TYP)}


def _bundle(path: Path, lines: list[dict], checkpoints: list[dict] | None = None, signer: keys.Signer | None = None,
            jwks: dict | None = None) -> Path:
    """A bundle of `lines`, with `checkpoints` (default: one by `signer` over every line) and `jwks`
    (default: the signer's key, or the keys of the checkpoints' signers given as `jwks`)."""
    signer = signer or _signer()
    if checkpoints is None:
        checkpoints = [_checkpoint(lines, len(lines), signer)]
    writer = BundleWriter(path, TENANT)
    writer.events.write(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    array = writer.start_checkpoints()
    for checkpoint in checkpoints:
        array.add(checkpoint)
    v1 = sum(line["event"]["chain_version"] == 1 for line in lines)
    writer.finish(tree_size=len(lines), root_hash=checkpoints[-1]["root_hash"] if checkpoints else None,
                  counts={"events": len(lines), "chain_v1_events": v1}, notices=[NOTICE], disclosures=[DISCLOSURE],
                  jwks=jwks or {"keys": [signer.public_jwk()]}, filename=path.name)
    return path


def _kinds(path: Path, **kwargs: Any) -> dict[str, int]:
    return dict(verify(path, **kwargs).by_kind)


OLD = [("a", 1), ("b", 1), ("a", 1)]  # the tenant's history from before chain version 2
NEW = [("a", 2), ("c", 2), ("b", 2), ("c", 2)]  # and since


def test_a_bundle_with_old_history_first_verifies(tmp_path):
    result = verify(_bundle(tmp_path / "ok.zip", _events(OLD + NEW)))
    assert result.valid, [b.as_dict() for b in result.breaks]
    assert result.counts["chain_v1_events"] == 3 and result.counts["subjects"] == 3


# -- 1. chain version 1 only as the oldest history ---------------------------------------------------


def test_a_version_1_event_forged_after_version_2_ones_is_a_break(tmp_path):
    """A DBA writes "version 1" events today: a hash over a payload he wrote, no seal to check. Before,
    such a bundle (re-checkpointed, as the service signs whatever the log holds) verified."""
    # a new member, all version 1, after version 2 events in the log
    forged = _bundle(tmp_path / "new.zip", _events(OLD + NEW + [("mallory", 1), ("mallory", 1)]))
    assert _kinds(forged) == {"legacy_after_v2": 2}
    result = verify(forged)
    assert {(b.kind, b.line, b.subject, b.seq) for b in result.breaks} == {
        ("legacy_after_v2", 8, "mallory", 1), ("legacy_after_v2", 9, "mallory", 2)}
    assert "oldest history" in result.breaks[0].detail
    # an existing member's chain continued by a version 1 event after its version 2 one
    continued = _bundle(tmp_path / "continued.zip", _events(OLD + NEW + [("c", 1)]))
    assert _kinds(continued) == {"legacy_after_v2": 1, "chain_legacy_after_v2": 1}
    # the cli says so
    assert cli(["verify-bundle", str(continued)]) == 1


@pytest.mark.parametrize("jobs", [1, 2])
def test_version_1_after_version_2_is_found_across_blocks(tmp_path, monkeypatch, jobs):
    """Blocks are checked apart (in worker processes with jobs=2): the rule holds across their edges,
    each offending event counted once per rule."""
    plan = OLD + [(f"m{i}", 2) for i in range(12)] + [("a", 2)] + [("z", 1), ("a", 1), ("a", 1)]
    path = _bundle(tmp_path / "blocks.zip", _events(plan))
    monkeypatch.setattr(vb, "BLOCK", 2048)  # about two lines a block
    result = verify(path, jobs=jobs)
    assert dict(result.by_kind) == {"legacy_after_v2": 3, "chain_legacy_after_v2": 2}, result.by_kind
    assert sorted(b.line for b in result.breaks if b.kind == "legacy_after_v2") == [17, 18, 19]
    # and a bundle whose version 1 events all come first is fine however it is cut
    assert verify(_bundle(tmp_path / "ok.zip", _events(OLD * 3 + NEW)), jobs=jobs).valid


def _legacy(field: str, value: Any) -> Callable[[int, dict], None]:
    def tweak(n: int, line: dict) -> None:
        if n == 1:
            line["legacy"][field] = value
    return tweak


def _printed(path: tuple[str, ...], value: Any) -> Callable[[int, dict], None]:
    def tweak(n: int, line: dict) -> None:
        if n == 1:
            target = line["event"]
            for name in path[:-1]:
                target = target[name]
            target[path[-1]] = value
    return tweak


@pytest.mark.parametrize("name, tweak", [
    ("id", _printed(("id",), str(uuid.UUID(int=1)))), ("seq", _legacy("seq", 2)),
    ("action", _printed(("action",), "withdrawn")), ("status", _printed(("status",), "refused")),
    ("previous_status", _printed(("previous_status",), "granted")), ("version", _printed(("version",), 9)),
    ("method", _printed(("method",), "paper")), ("actor.type", _printed(("actor", "type"), "operator")),
    ("actor.ref", _printed(("actor", "ref"), "상담원-1")), ("request_id", _printed(("request_id",), "x")),
    ("occurred_at", _printed(("occurred_at",), "2024-03-01T09:00:01.000000Z")),
    ("recorded_at", _legacy("recorded_at", "2024-03-01T09:00:02.123457+00:00")),
    ("reason", _printed(("reason",), "동의 철회")), ("tenant", _legacy("tenant_id", "other")),
    ("notice.id", _legacy("notice_id", str(uuid.UUID(int=501)))),
    ("disclosure_hash", _legacy("disclosure_hash", "00" * 32)),
    # the same value, another JSON type: 1 == 1.0 == true in Python, not in the hash
    ("seq", _legacy("seq", True)), ("version", _legacy("version", 1.0)),
    ("occurred_at", _legacy("occurred_at", "not a time")),
    ("the payload's members", _legacy("note", "written later")),
])
def test_every_printed_field_a_v1_payload_determines_must_agree(tmp_path, name, tweak):
    """The printed v1 event is what an auditor reads; the hash covers only the payload. With the hash
    recomputed over the payload (so event_hash passes), the printed lie is named."""
    kinds = _kinds(_bundle(tmp_path / "b.zip", _events(OLD + NEW, tweak)))
    assert "legacy_mismatch" in kinds, kinds
    result = verify(tmp_path / "b.zip")
    (mismatch,) = [b for b in result.breaks if b.kind == "legacy_mismatch"]
    assert name in mismatch.detail, mismatch.detail


def test_a_v1_instant_with_another_offset_is_the_same_instant(tmp_path):
    def tweak(n: int, line: dict) -> None:
        if n == 1:  # 09:00:01.123457 UTC written at +09:00
            line["legacy"]["occurred_at"] = line["legacy"]["recorded_at"] = "2024-03-01T18:00:01.123457+09:00"
    assert verify(_bundle(tmp_path / "b.zip", _events(OLD + NEW, tweak))).valid


def test_what_the_v1_hash_does_not_cover_is_what_the_documents_say(tmp_path):
    """The v1 payload holds internal ids where the printed event has the member id, the purpose's,
    collection point's and notice's keys: those printed members of a version 1 event are covered by no
    hash (docs/proof-test-vectors.md section 8, the bundle's README). This pins that list."""
    root = Path(__file__).resolve().parents[2]
    def no_disclosure(n: int, line: dict) -> None:  # (a purpose is bound to the disclosure an event cites)
        if n == 1:
            line["event"]["disclosure_hash"] = line["legacy"]["disclosure_hash"] = None

    uncovered = {("purpose",): "marketing-email", ("collection_point",): "kiosk",
                 ("evidence",): {"id": str(uuid.UUID(int=3)), "commitment": "ab" * 32}}
    for field, value in uncovered.items():
        printed = _printed(field, value)
        result = verify(_bundle(tmp_path / "u.zip", _events(OLD + NEW, lambda n, line, printed=printed: (
            no_disclosure(n, line), printed(n, line)))))
        assert result.valid, (field, result.by_kind)
    doc = (root / "docs" / "proof-test-vectors.md").read_text("utf-8")
    section = doc[doc.index("## 8. Chain version 1"):doc.index("## 9. Vectors")]
    for name in ("`subject_id`", "`purpose`", "`collection_point`", "`notice`", "`evidence`", "Not covered by the v1"):
        assert name in section, name
    with zipfile.ZipFile(_bundle(tmp_path / "r.zip", _events(OLD + NEW))) as zf:
        readme = zf.read("README.md").decode()
    assert "not covered by their hash" in readme and "해시가 덮지 않는" in readme
    assert "collection_point" in readme and "notice" in readme and "purpose" in readme


# -- 2. whose keys --------------------------------------------------------------------------------------


def _add_key_and_sign(path: Path, out: Path, lines: list[dict], checkpoints: list[dict], service: keys.Signer,
                      extra: int = 2) -> tuple[Path, keys.Signer]:
    """The attacker's bundle: `extra` events appended, his own key added to jwks.json beside the
    service's, and a checkpoint over everything signed by it."""
    mallory = _signer()
    more = _events([(f"x{i}", 2) for i in range(extra)])
    grown = lines + [{**line, "log_index": len(lines) + i} for i, line in enumerate(more)]
    forged = _checkpoint(grown, len(grown), mallory)
    return _bundle(out, grown, checkpoints + [forged],
                   jwks={"keys": [service.public_jwk(), mallory.public_jwk()]}), mallory


def test_a_key_added_to_jwks_json_does_not_pass_a_trusted_checkpoint(tmp_path, capsys):
    service = _signer()
    lines = _events(OLD + NEW)
    checkpoints = [_checkpoint(lines, 4, service), _checkpoint(lines, len(lines), service)]
    path = _bundle(tmp_path / "ok.zip", lines, checkpoints, jwks={"keys": [service.public_jwk()]})
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(checkpoints[0]))  # the auditor kept the checkpoint of size 4
    honest = verify(path, trusted_checkpoint=saved)
    assert honest.valid and honest.warnings == [] and service.kid in honest.keys_from

    forged, mallory = _add_key_and_sign(path, tmp_path / "forged.zip", lines, checkpoints, service)
    assert verify(forged).valid  # alone, the bundle vouches for itself (hence the warning, below)
    result = verify(forged, trusted_checkpoint=saved)
    assert dict(result.by_kind) == {"untrusted_key": 1}, result.by_kind
    (found,) = result.breaks
    assert mallory.kid in found.detail and service.kid in found.detail and found.file == "checkpoints.json"
    assert result.counts["checkpoints_verified"] == 2 and result.trusted["consistent"]
    assert cli(["verify-bundle", str(forged), "--trusted-checkpoint", str(saved)]) == 1
    assert "untrusted_key" in capsys.readouterr().out
    # the attacker cannot drop the service's key either: then the trusted checkpoint itself fails
    resigned = _bundle(tmp_path / "resigned.zip", json.loads(json.dumps(lines)),
                       [_checkpoint(lines, 4, mallory), _checkpoint(lines, len(lines), mallory)], signer=mallory)
    assert "trusted_signature" in _kinds(resigned, trusted_checkpoint=saved)


def test_a_service_that_changed_keys_passes_with_both_given_as_public_keys(tmp_path):
    old, new = _signer(), _signer()
    lines = _events(OLD + NEW)
    checkpoints = [_checkpoint(lines, 4, old), _checkpoint(lines, len(lines), new)]
    path = _bundle(tmp_path / "rotated.zip", lines, checkpoints, jwks={"keys": [old.public_jwk(), new.public_jwk()]})
    saved = tmp_path / "saved.jws"
    saved.write_text(checkpoints[0]["jws"])
    assert _kinds(path, trusted_checkpoint=saved) == {"untrusted_key": 1}
    both = tmp_path / "both.jwks.json"
    both.write_text(json.dumps({"keys": [old.public_jwk(), new.public_jwk()]}))
    result = verify(path, public_key=both, trusted_checkpoint=saved)
    assert result.valid and result.warnings == [], result.by_kind
    only_new = tmp_path / "new.jwk.json"
    only_new.write_text(json.dumps(new.public_jwk()))
    assert "trusted_signature" in _kinds(path, public_key=only_new, trusted_checkpoint=saved)


def test_without_a_key_or_a_trusted_checkpoint_the_output_warns(tmp_path, capsys):
    signer = _signer()
    path = _bundle(tmp_path / "b.zip", _events(OLD + NEW), signer=signer)
    result = verify(path)
    assert result.valid and len(result.warnings) == 1 and "jwks.json" in result.warnings[0]
    assert cli(["verify-bundle", str(path)]) == 0
    out = capsys.readouterr().out
    assert "WARNING:" in out and "--public-key" in out and "VALID" in out
    assert cli(["verify-bundle", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is True and report["warnings"] == result.warnings
    key = tmp_path / "k.json"
    key.write_text(json.dumps(signer.public_jwk()))
    assert cli(["verify-bundle", str(path), "--public-key", str(key), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == []


# -- 3. resources ----------------------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes], manifest: dict | None = None) -> Path:
    """A ZIP of `members` with a manifest that lists them (so only the sizes are wrong)."""
    files = [{"name": n, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in members.items()]
    manifest = manifest or {"format": vb.FORMAT, "tenant": TENANT, "tree_size": 0, "root_hash": None, "files": files}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr("manifest.json", json.dumps(manifest))
    return path


def _real(tmp_path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(_bundle(tmp_path / "real.zip", _events(OLD + NEW))) as zf:
        return {name: zf.read(name) for name in zf.namelist() if name != "manifest.json"}


def _unreadable(path: Path, capsys, expect: str) -> str:
    started = time.perf_counter()
    with pytest.raises(Unreadable) as caught:
        verify(path)
    assert cli(["verify-bundle", str(path)]) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - started < 5
    assert err.startswith("unreadable: ") and expect in err, err
    return str(caught.value)


def test_zip_bombs_are_refused_in_bounded_time(tmp_path, capsys):
    real = _real(tmp_path)
    # one line of 64 MiB (about 64 KiB deflated): refused before anything is inflated
    bomb = _zip(tmp_path / "line.zip", {**real, "events.ndjson": b"a" * (64 << 20)})
    assert "inflates past" in _unreadable(bomb, capsys, "member events.ndjson inflates past")
    # notices.json of 80 MiB: past its own limit, whatever it compresses to
    _unreadable(_zip(tmp_path / "notices.zip", {**real, "notices.json": b" " * (80 << 20) + b"[]"}), capsys,
                "member notices.json inflates past")
    # checkpoints.json (16 times its compressed size at most)
    _unreadable(_zip(tmp_path / "cp.zip", {**real, "checkpoints.json": b"[\n" + b" " * (8 << 20) + b"\n]\n"}), capsys,
                "member checkpoints.json inflates past")
    # a manifest of 2 MiB
    _unreadable(_zip(tmp_path / "m.zip", real, manifest={"format": vb.FORMAT, "pad": "x" * (2 << 20)}), capsys,
                "member manifest.json inflates past")


def test_a_line_longer_than_the_limit_stops_the_reading(tmp_path, capsys):
    """Incompressible, so within the ratio: the line limit stops it, wherever the line is."""
    noise = base64.b64encode(os.urandom(3 << 20))  # 4 MiB without a newline
    lines = real_lines = _real(tmp_path)["events.ndjson"]
    for where, data in (("first", noise + b"\n" + lines), ("last, unended", lines + noise),
                        ("inside a block", lines + noise[:(3 << 19)] + b"\n" + lines)):
        path = _zip(tmp_path / "long.zip", {**_real(tmp_path), "events.ndjson": data})
        assert "is longer than 1048576 bytes" in _unreadable(path, capsys, "member events.ndjson: line"), where
    # checkpoints.json alike, laid out one per line
    cp = _real(tmp_path)["checkpoints.json"].replace(b"\n]", b",\n" + noise + b"\n]")
    _unreadable(_zip(tmp_path / "cp.zip", {**_real(tmp_path), "checkpoints.json": cp}), capsys,
                "member checkpoints.json: line 3 is longer")
    assert real_lines


def test_a_flood_of_short_lines_is_refused(tmp_path, capsys):
    """Empty lines cost per line what events do; padded with noise to get past the ratio, 8 MiB of them
    are still refused at their first block."""
    noise = base64.b64encode(os.urandom(600_000))
    path = _zip(tmp_path / "flood.zip", {**_real(tmp_path), "events.ndjson": noise + b"\n" * (8 << 20)})
    assert "far fewer than any entry" in _unreadable(path, capsys, "member events.ndjson: lines")


def test_a_json_member_of_tiny_arrays_is_refused_before_parsing(tmp_path, capsys):
    """64 MiB of `[],` would take ~2 GB parsed; 8 MiB of them (well within the notices' limit) are
    refused by their density, before orjson sees them."""
    data = b"[" + b"[]," * ((8 << 20) // 3) + b"[]]"
    _unreadable(_zip(tmp_path / "dense.zip", {**_real(tmp_path), "notices.json": data}), capsys,
                "member notices.json: ")


def test_the_line_splitter_is_linear_whatever_the_chunks():
    """A line of almost LINE_MAX bytes read 64 bytes at a time: carried over as pieces, not re-copied."""
    class Reader:
        def __init__(self, data: bytes, step: int) -> None:
            self.data, self.pos, self.step = data, 0, step

        def read(self, n: int) -> bytes:
            out = self.data[self.pos:self.pos + self.step]
            self.pos += len(out)
            return out

    data = b"z" * (vb.LINE_MAX - 1) + b"\n" + b"\n".join(b"y" * 300 for _ in range(1000))
    started = time.perf_counter()
    blocks = list(vb._blocks(Reader(data, 64), "events.ndjson", 64))
    assert time.perf_counter() - started < 2
    assert b"\n".join(block for block, _, _ in blocks) == data
    assert [first for _, first, _ in blocks][:2] == [1, 2] and sum(n for _, _, n in blocks) == 1001
    for step in (1, 3, 4096, 1 << 20):  # the same lines whatever the chunks
        again = list(vb._blocks(Reader(data[-5000:], step), "events.ndjson", step))
        assert b"\n".join(block for block, _, _ in again) == data[-5000:]


# -- 4. members of any shape -----------------------------------------------------------------------------


def test_notices_of_the_wrong_shape_are_breaks_not_tracebacks(tmp_path, capsys):
    real = _real(tmp_path)
    for entry in ({**NOTICE, "key": ["privacy-policy"]}, {**NOTICE, "version": {"v": 1}}, {**NOTICE, "id": 5},
                  {**NOTICE, "body": None}, [NOTICE], "notice"):
        notices = json.dumps([entry]).encode()
        path = _fix_manifest(tmp_path / "n.zip", {**real, "notices.json": notices})
        result = verify(path)
        assert "malformed_member" in result.by_kind, entry
        assert cli(["verify-bundle", str(path)]) == 1
        assert "Traceback" not in capsys.readouterr().err


def _fix_manifest(path: Path, members: dict[str, bytes]) -> Path:
    files = [{"name": n, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in members.items()]
    events = members.get("events.ndjson", b"").count(b"\n")
    return _zip(path, members, {"format": vb.FORMAT, "tenant": TENANT, "tree_size": events, "root_hash": None,
                                "files": files})


_ODD = [None, True, False, 0, -1, 1.5, 2**63 - 1, "", "x", "z" * 300, [], {}, [1, "a"], {"a": [None]},
        [[[[[[[[[[1]]]]]]]]]], {"id": 1}]


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside a JSON document."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


def _mutate(value: Any, rng: random.Random) -> Any:
    """`value` with one value somewhere (or the whole) replaced by one of another type, or a member
    dropped."""
    value = json.loads(json.dumps(value))
    path = rng.choice(_paths(value))
    if not path:
        return rng.choice(_ODD)
    parent = value
    for step in path[:-1]:
        parent = parent[step]
    if isinstance(parent, dict) and rng.random() < 0.15:
        del parent[path[-1]]
    else:
        parent[path[-1]] = rng.choice(_ODD)
    return value


def test_fuzz_every_member_of_any_shape_gives_0_1_or_2_never_a_traceback(tmp_path, capsys, monkeypatch):
    """Random fields of every member replaced by values of other types (bounded: FUZZ_CASES, default
    240; FUZZ_SEED): verify either returns a result or raises Unreadable, and the cli exits 0, 1 or 2.
    Half the cases with blocks of about two lines, so what crosses blocks is stitched from them too."""
    rng = random.Random(int(os.environ.get("FUZZ_SEED", "4")))
    service = _signer()
    lines = _events(OLD + NEW)
    checkpoints = [_checkpoint(lines, 4, service), _checkpoint(lines, len(lines), service)]
    with zipfile.ZipFile(_bundle(tmp_path / "base.zip", lines, checkpoints, signer=service)) as zf:
        base = {name: zf.read(name) for name in zf.namelist()}
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(checkpoints[0]))
    names = ["events.ndjson", "notices.json", "disclosures.json", "checkpoints.json", "jwks.json", "manifest.json"]
    codes = set()
    for case in range(int(os.environ.get("FUZZ_CASES", "240"))):
        name = names[case % len(names)]
        monkeypatch.setattr(vb, "BLOCK", 2048 if case % 4 < 2 else 4 << 20)
        members = dict(base)
        if name == "events.ndjson":
            events = members[name].rstrip(b"\n").split(b"\n")
            n = rng.randrange(len(events))
            events[n] = json.dumps(_mutate(json.loads(events[n]), rng)).encode()
            members[name] = b"\n".join(events) + b"\n"
        elif name == "checkpoints.json" and rng.random() < 0.5:  # one per line, as written
            items = [_mutate(item, rng) if rng.random() < 0.5 else item for item in json.loads(members[name])]
            members[name] = b"[\n" + b",\n".join(json.dumps(item).encode() for item in items) + b"\n]\n"
        else:
            members[name] = json.dumps(_mutate(json.loads(members[name]), rng)).encode()
        if name != "manifest.json" and rng.random() < 0.8:  # mostly with the manifest's hashes following
            manifest = json.loads(members["manifest.json"])
            for entry in manifest["files"]:
                entry["sha256"] = hashlib.sha256(members[entry["name"]]).hexdigest()
                entry["size"] = len(members[entry["name"]])
            members["manifest.json"] = json.dumps(manifest).encode()
        path = tmp_path / "fuzz.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for member, data in members.items():
                zf.writestr(member, data)
        for kwargs in ({}, {"trusted_checkpoint": saved}):
            try:
                verify(path, **kwargs)
            except Unreadable:
                pass
        code = cli(["verify-bundle", str(path), "--json"] + (["--trusted-checkpoint", str(saved)] if case % 2 else []))
        out = capsys.readouterr()
        assert code in (0, 1, 2) and "Traceback" not in out.err and "could not finish" not in out.err, (case, out.err)
        if code != 2:
            json.loads(out.out)
        codes.add(code)
    assert codes >= {1, 2}  # both breaks and unreadable bundles were among them


def test_the_cli_never_exits_1_for_a_verifier_failure(tmp_path, capsys, monkeypatch):
    """Were a shape ever to slip through to an exception, the cli says so and exits 2, not 1 ("breaks")."""
    path = _bundle(tmp_path / "b.zip", _events(OLD + NEW))

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr(vb, "verify", broken)
    assert cli(["verify-bundle", str(path)]) == 2
    err = capsys.readouterr().err
    assert "could not finish" in err and "TypeError" in err and "Traceback" not in err
