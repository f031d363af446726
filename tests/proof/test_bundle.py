"""Audit bundles (issue 8 point 4, "anyone can recompute"): written from the database in one snapshot,
checked offline by verify-bundle. Every tampering of the ZIP is named; an auditor's own key refuses
checkpoints signed by another; a checkpoint saved earlier catches a rogue DBA's rewrite even when the
rewritten log is re-signed with the service's own key."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import uuid
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.consents import chain
from app.core.hashing import canonical_json, sha256_hex
from app.duties import records as duty_records
from app.proof import checkpoint_files, checkpoint_rows, keys, log, merkle
from app.proof.bundle import BundleWriter, write_bundle
from app.proof.cli import main as cli
from app.proof.verify_bundle import load_trusted_checkpoint, verify
from tests.helpers import sign_up

ROOT = Path(__file__).resolve().parents[2]
TYP = "consent-ledger-checkpoint+jwt"
CLIENT_IP = "203.0.113.7"  # what the test client connects from (tests/conftest.py): never in a bundle


async def _sign_ups(client, headers, prefix: str, n: int) -> None:
    for i in range(n):
        response = await sign_up(client, headers, f"{prefix}-{i}", granted={"marketing", "marketing-sms"})
        assert response.status_code == 201, response.text


async def _withdraw(client, headers, subject: str) -> uuid.UUID:
    response = await client.post(f"/v1/subjects/{subject}/consents/marketing-sms/withdraw", headers=headers)
    assert response.status_code == 200, response.text
    return uuid.UUID(response.json()["results"][0]["event"]["id"])


async def _bundle(app, tenant: str, path: Path) -> dict[str, Any]:
    return await write_bundle(app.state.pool, tenant, app.state.proof, path)


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _write_members(path: Path, members: dict[str, bytes], fix_manifest: bool = True) -> Path:
    """The bundle with its members replaced; with fix_manifest, the manifest's hashes follow (so what
    is found is the tampering itself, not only a member hash)."""
    members = dict(members)
    if fix_manifest:
        manifest = json.loads(members["manifest.json"])
        for entry in manifest["files"]:
            data = members[entry["name"]]
            entry["sha256"], entry["size"] = hashlib.sha256(data).hexdigest(), len(data)
        members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _lines(members: dict[str, bytes]) -> list[bytes]:
    return members["events.ndjson"].rstrip(b"\n").split(b"\n")


def _leaf_doc(line: dict[str, Any]) -> dict[str, Any]:
    """A line's leaf document: its event, or its duty record (docs/duties.md)."""
    return line["event"] if "event" in line else line["duty_record"]


def _with_lines(members: dict[str, bytes], lines: list[bytes]) -> dict[str, bytes]:
    return {**members, "events.ndjson": b"\n".join(lines) + b"\n"}


def _kinds(path: Path, **kwargs: Any) -> set[str]:
    result = verify(path, **kwargs)
    return set(result.by_kind)


@pytest.fixture
async def bundle(app, client, auth, demo, tmp_path) -> tuple[Path, str]:
    """A bundle of four subjects (one withdrew), with two checkpoints: one made mid-way, one by the writer."""
    headers = auth(demo)
    await _sign_ups(client, headers, "a", 2)
    await log.make_checkpoint(app.state.pool, demo, app.state.proof)
    await _sign_ups(client, headers, "b", 2)
    await _withdraw(client, headers, "a-0")
    path = tmp_path / "bundle.zip"
    await _bundle(app, demo, path)
    return path, demo


async def test_a_bundle_verifies_and_holds_what_the_api_prints(app, client, auth, db, bundle, tmp_path):
    path, tenant = bundle
    result = verify(path)
    assert result.valid, [b.as_dict() for b in result.breaks]
    stored = await db.fetchval("SELECT count(*) FROM consent_events WHERE tenant_id = $1", tenant)
    # The log's leaves are the events and the duty records they caused (docs/duties.md).
    duties = await db.fetchval("SELECT count(*) FROM duty_records WHERE tenant_id = $1", tenant)
    assert duties > 0
    assert result.counts["events"] == stored and result.counts["duty_records"] == duties
    assert result.counts["leaves"] == result.tree_size == stored + duties
    assert result.counts["subjects"] == 4 and result.counts["chain_v1_events"] == 0
    assert result.counts["checkpoints"] == result.counts["checkpoints_verified"] == 2
    assert result.counts["notices"] >= 1 and result.counts["disclosures"] >= 2

    members = _members(path)
    assert set(members) == {"manifest.json", "events.ndjson", "notices.json", "disclosures.json", "checkpoints.json",
                            "catalog.json", "jwks.json", "README.md"}
    # The catalog as it was: its whole history, every purpose the events cite among it (issue 11 point 3).
    catalog = json.loads(members["catalog.json"])
    assert {c["key"] for c in catalog if c["entity"] == "purposes"} >= {"marketing-sms", "membership"}
    assert all(c["op"] in ("insert", "update", "delete", "baseline") and c["changed_at"].endswith("Z") for c in catalog)
    manifest = json.loads(members["manifest.json"])
    assert manifest["format"] == "consent-ledger-bundle/1" and manifest["tenant"] == tenant
    assert manifest["tree_size"] == stored + duties and manifest["counts"]["events"] == stored
    assert manifest["counts"]["duty_records"] == duties
    assert {f["name"]: f["sha256"] for f in manifest["files"]} == {
        name: hashlib.sha256(data).hexdigest() for name, data in members.items() if name != "manifest.json"}
    checkpoints = json.loads(members["checkpoints.json"])
    assert [c["tree_size"] for c in checkpoints] == sorted(c["tree_size"] for c in checkpoints)
    assert checkpoints[-1]["tree_size"] == stored + duties and manifest["root_hash"] == checkpoints[-1]["root_hash"]
    assert json.loads(members["jwks.json"]) == app.state.proof.jwks()
    readme = members["README.md"].decode()
    assert "verify-bundle" in readme and "감사" in readme and "--trusted-checkpoint" in readme
    # No raw evidence: the client's address and user agent appear nowhere, only the commitments.
    for name, data in members.items():
        assert CLIENT_IP.encode() not in data and b"python-httpx" not in data, name

    # Each line is a leaf, in log order: an event exactly as the API prints it, or a duty record
    # exactly as its document is hashed (docs/duties.md).
    lines = [orjson.loads(line) for line in _lines(members)]
    assert [line["log_index"] for line in lines] == list(range(stored + duties))
    assert all(set(line) in ({"log_index", "event"}, {"log_index", "duty_record"}) for line in lines)
    logged = [r["event_id"] for r in await db.fetch(
        "SELECT event_id FROM ledger_log WHERE tenant_id = $1 ORDER BY idx", tenant)]
    assert [uuid.UUID(_leaf_doc(line)["id"]) for line in lines] == logged
    events = [line["event"] for line in lines if "event" in line]
    assert len(events) == stored
    history = await client.get("/v1/subjects/a-0/consents/history", headers=auth(tenant))
    printed = {e["id"]: e for e in history.json()["items"]}
    bundled = {e["id"]: e for e in events if e["subject_id"] == "a-0"}
    assert bundled == printed
    assert all(e["evidence"] is None or set(e["evidence"]) == {"id", "commitment"} for e in bundled.values())
    records = {line["duty_record"]["id"]: line["duty_record"] for line in lines if "duty_record" in line}
    rows = await db.fetch("SELECT d.*, s.external_id FROM duty_records d JOIN subjects s ON s.id = d.subject_id "
                          "WHERE d.tenant_id = $1", tenant)
    assert records == {str(r["id"]): {**duty_records.document({**r, "detail": json.loads(r["detail"])}, tenant=tenant,
                                                               subject_ref=r["external_id"]), "hash": r["hash"]}
                       for r in rows}
    assert all(duty_records.document_hash(doc) == doc["hash"] for doc in records.values())
    notices = json.loads(members["notices.json"])
    assert {n["id"] for n in notices} == {e["notice"]["id"] for e in events if e["notice"]}
    assert all(sha256_hex(n["body"]) == n["sha256"] for n in notices)


async def test_the_cli_exits_0_on_a_good_bundle_and_prints_json(bundle):
    """Through the `consent-ledger` entry point (app/cli.py), in a process of its own."""
    path, tenant = bundle
    done = subprocess.run([sys.executable, "-m", "app.cli", "verify-bundle", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "VALID" in done.stdout and tenant in done.stdout
    done = subprocess.run([sys.executable, "-m", "app.cli", "verify-bundle", str(path), "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["valid"] is True and report["breaks"] == [] and report["counts"]["subjects"] == 4


def _edit_event(lines: list[bytes], subject: str, seq: int, **changes: Any) -> tuple[list[bytes], int]:
    for n, raw in enumerate(lines):
        line = orjson.loads(raw)
        if "event" in line and line["event"]["subject_id"] == subject and line["event"]["seq"] == seq:
            line["event"].update(changes)
            return lines[:n] + [orjson.dumps(line)] + lines[n + 1:], n + 1
    raise AssertionError(f"no event {subject} seq {seq}")


def _checkpoints(members: dict[str, bytes], change: Callable[[list[dict]], None]) -> dict[str, bytes]:
    items = json.loads(members["checkpoints.json"])
    change(items)
    return {**members, "checkpoints.json": json.dumps(items).encode()}


def _new_payload(token: str, **changes: Any) -> str:
    header, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(changes)
    return ".".join([header, base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode(), signature])


def _swap_signature(items: list[dict]) -> None:
    first, last = items[0]["jws"].split("."), items[-1]["jws"].split(".")
    items[-1]["jws"] = ".".join(last[:2] + first[2:])  # a real signature, of another checkpoint


def _other_root(items: list[dict]) -> None:
    items[-1]["root_hash"] = "00" * 32


def _other_signed_root(items: list[dict]) -> None:
    items[-1]["jws"] = _new_payload(items[-1]["jws"], root_hash="11" * 32)
    items[-1]["root_hash"] = "11" * 32


async def test_every_tampering_is_named(bundle, tmp_path, capsys):
    path, tenant = bundle
    members = _members(path)
    lines = _lines(members)
    edited, edited_line = _edit_event(lines, "a-0", 3, status="granted")
    dropped = next(n for n, raw in enumerate(lines) if orjson.loads(raw).get("event", {}).get("seq") == 2)
    notices = json.loads(members["notices.json"])
    notices[0]["body"] += "\n(덧붙임)"
    cases = {
        "edit an event's field": (_with_lines(members, edited), {"event_hash"}),
        "drop an event line": (_with_lines(members, lines[:dropped] + lines[dropped + 1:]),
                               {"log_order", "chain_seq", "broken_link", "checkpoint_beyond_events", "checkpoint_root"}),
        "swap two lines": (_with_lines(members, lines[:1] + lines[2:3] + lines[1:2] + lines[3:]),
                           {"log_order", "checkpoint_root"}),
        "change a notice body": ({**members, "notices.json": json.dumps(notices).encode()}, {"notice_body"}),
        "replace a checkpoint's signature": (_checkpoints(members, _swap_signature), {"checkpoint_signature"}),
        "change a listed root": (_checkpoints(members, _other_root), {"checkpoint_fields"}),
        "change a signed root": (_checkpoints(members, _other_signed_root), {"checkpoint_signature", "checkpoint_root"}),
    }
    for name, (changed, expected) in cases.items():
        tampered = _write_members(tmp_path / "tampered.zip", changed)
        result = verify(tampered)
        assert not result.valid, name
        assert expected <= set(result.by_kind), (name, result.by_kind)
        assert cli(["verify-bundle", str(tampered)]) == 1, name
        out = capsys.readouterr().out
        assert all(kind in out for kind in expected), (name, out)
        assert "BROKEN" in out
    # where: the edited event is named by file, line, log index, subject and seq
    result = verify(_write_members(tmp_path / "edited.zip", _with_lines(members, edited)))
    (found,) = [b for b in result.breaks if b.kind == "event_hash"]
    assert (found.file, found.line, found.log_index, found.tenant, found.subject, found.seq) == \
        ("events.ndjson", edited_line, edited_line - 1, tenant, "a-0", 3)
    assert found.where() == f"events.ndjson:{edited_line}, log index {edited_line - 1}, subject {tenant}/a-0 seq 3"
    # a member changed without fixing the manifest: its hash is named too
    result = verify(_write_members(tmp_path / "stale.zip", _with_lines(members, edited), fix_manifest=False))
    assert {"member_hash", "event_hash"} <= set(result.by_kind)
    assert [b.file for b in result.breaks if b.kind == "member_hash"] == ["events.ndjson"]
    # the catalog's history rewritten in the bundle: its hash is named; a malformed one is named as such
    history = json.loads(members["catalog.json"])
    history[0]["changed_by"] = "someone else"
    stale = verify(_write_members(tmp_path / "catalog.zip", {**members, "catalog.json": b"[\n" + b",\n".join(
                                      json.dumps(c).encode() for c in history) + b"\n]\n"},
                                  fix_manifest=False))
    assert [(b.kind, b.file) for b in stale.breaks] == [("member_hash", "catalog.json")]
    for garbage in (b'[{"op": 1}]', b"[\n" + b"{},\n" * 200_000 + b"{}\n]\n", b'[\n{"op": 1}\n]\n'):
        malformed = verify(_write_members(tmp_path / "catalog2.zip", {**members, "catalog.json": garbage}))
        assert [(b.kind, b.file) for b in malformed.breaks] == [("malformed_member", "catalog.json")], garbage[:20]


async def test_an_edit_with_its_hash_recomputed_still_breaks_the_chain_and_the_checkpoints(bundle, tmp_path):
    path, _ = bundle
    members = _members(path)
    lines = _lines(members)
    edited = 0
    for n, raw in enumerate(lines):
        line = orjson.loads(raw)
        if "event" in line and line["event"]["subject_id"] == "a-0" and line["event"]["seq"] == 1:
            line["event"]["status"] = line["event"]["action"] = "refused"
            line["event"]["hash"] = chain.document_hash(line["event"])
            lines[n] = orjson.dumps(line)
            edited += 1
    assert edited == 1
    kinds = _kinds(_write_members(tmp_path / "rehashed.zip", _with_lines(members, lines)))
    assert "event_hash" not in kinds and {"broken_link", "checkpoint_root"} <= kinds


async def test_duty_records_are_leaves_a_bundle_counts_and_an_edit_of_one_is_named(bundle, db, tmp_path):
    """The marketing grants and the withdrawal of the fixture owe duties (docs/duties.md): their
    records are lines of their own, counted, and a record changed after it was recorded is named."""
    path, tenant = bundle
    result = verify(path)
    assert result.valid, [b.as_dict() for b in result.breaks]
    duties = await db.fetchval("SELECT count(*) FROM duty_records WHERE tenant_id = $1", tenant)
    assert result.counts["duty_records"] == duties > 0
    assert result.counts["events"] + result.counts["duty_records"] == result.counts["leaves"] == result.tree_size
    members = _members(path)
    lines = _lines(members)
    n = next(n for n, raw in enumerate(lines) if "duty_record" in orjson.loads(raw))
    line = orjson.loads(lines[n])
    assert line["duty_record"]["detail"]  # something to change
    # The notice "went out" on another day, or for other acts: its hash is left as it was.
    line["duty_record"]["detail"] = {**line["duty_record"]["detail"], "article": "changed afterwards"}
    edited = lines[:n] + [orjson.dumps(line)] + lines[n + 1:]
    tampered = verify(_write_members(tmp_path / "duty.zip", _with_lines(members, edited)))
    assert not tampered.valid and set(tampered.by_kind) == {"event_hash"}, tampered.by_kind
    (found,) = tampered.breaks
    assert (found.file, found.line) == ("events.ndjson", n + 1) and "duty record" in found.detail
    # Its hash recomputed too: the document holds, but the leaf is another, so the signed roots break.
    line["duty_record"]["hash"] = duty_records.document_hash(line["duty_record"])
    rehashed = lines[:n] + [orjson.dumps(line)] + lines[n + 1:]
    kinds = _kinds(_write_members(tmp_path / "duty-rehashed.zip", _with_lines(members, rehashed)))
    assert "event_hash" not in kinds and "checkpoint_root" in kinds, kinds


async def test_unreadable_input_is_exit_2(bundle, tmp_path, capsys):
    path, _ = bundle
    (tmp_path / "not.zip").write_bytes(b"not a zip")
    assert cli(["verify-bundle", str(tmp_path / "not.zip")]) == 2
    assert cli(["verify-bundle", str(tmp_path / "missing.zip")]) == 2
    members = _members(path)
    del members["manifest.json"]
    assert cli(["verify-bundle", str(_write_members(tmp_path / "nomanifest.zip", members, fix_manifest=False))]) == 2
    (tmp_path / "key.pem").write_text("not a key")
    assert cli(["verify-bundle", str(path), "--public-key", str(tmp_path / "key.pem")]) == 2
    (tmp_path / "cp.json").write_text("{}")
    assert cli(["verify-bundle", str(path), "--trusted-checkpoint", str(tmp_path / "cp.json")]) == 2
    assert "unreadable" in capsys.readouterr().err


async def test_only_the_auditors_own_key_is_trusted(app, bundle, tmp_path, settings):
    path, _ = bundle
    service = serialization.load_pem_private_key(settings.signing_key_file.read_bytes(), None)
    pem = tmp_path / "service.pub.pem"
    pem.write_bytes(service.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    jwk = tmp_path / "service.jwk.json"
    jwk.write_text(json.dumps(app.state.proof.signer.public_jwk()))
    for key in (pem, jwk):
        result = verify(path, public_key=key)
        assert result.valid and result.keys_from == f"--public-key {key}", result.by_kind
    other = keys.Signer(Ed25519PrivateKey.generate())
    other_pem = tmp_path / "other.pub.pem"
    other_pem.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    other_jwks = tmp_path / "other.jwks.json"
    other_jwks.write_text(json.dumps({"keys": [other.public_jwk()]}))
    for key in (other_pem, other_jwks):
        result = verify(path, public_key=key)
        assert result.by_kind["checkpoint_signature"] == result.counts["checkpoints"] == 2, result.by_kind
        assert all("no key with kid" in b.detail for b in result.breaks if b.kind == "checkpoint_signature")
        assert cli(["verify-bundle", str(path), "--public-key", str(key)]) == 1
    # A bundle re-signed by someone else, with their key in its own jwks.json, verifies against
    # that jwks.json -- which is why an auditor gives --public-key.
    members = _members(path)

    def resign(items: list[dict]) -> None:
        for item in items:
            payload = {k: item[k] for k in ("tenant", "tree_size", "root_hash", "issued_at")}
            item["jws"], item["key_id"] = other.sign(payload, TYP), other.kid

    forged = _checkpoints({**members, "jwks.json": json.dumps({"keys": [other.public_jwk()]}).encode()}, resign)
    forged_path = _write_members(tmp_path / "forged.zip", forged)
    alone = verify(forged_path)
    assert alone.valid and alone.warnings and "jwks.json" in alone.warnings[0]  # ... and says so
    assert "checkpoint_signature" in _kinds(forged_path, public_key=pem)
    assert verify(path, public_key=pem).warnings == []
    # A checkpoint the auditor saved anchors the service's key: another key in jwks.json beside it
    # signs nothing he accepts.
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(json.loads(members["checkpoints.json"])[0]))
    both = _checkpoints({**members, "jwks.json": json.dumps(
        {"keys": [app.state.proof.signer.public_jwk(), other.public_jwk()]}).encode()}, resign)
    both_path = _write_members(tmp_path / "both.zip", both)
    result = verify(both_path, trusted_checkpoint=saved)
    assert dict(result.by_kind) == {"untrusted_key": 2} and result.warnings == [], result.by_kind
    assert all(other.kid in b.detail for b in result.breaks)
    assert verify(path, trusted_checkpoint=saved).valid


async def _rogue_rewrite_without(db, tenant: str, event_id: uuid.UUID) -> int:
    """A superuser with triggers off: the event deleted, its subject's head and state rewound, the
    duty records it caused or closed deleted and their duties rewound (docs/duties.md), the tenant's
    log, stored subtrees and checkpoints rebuilt as if it had never been. Returns the leaves removed."""
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        gone = await db.fetchrow("SELECT * FROM consent_events WHERE id = $1", event_id)
        last = await db.fetchval("SELECT max(seq) FROM consent_events WHERE subject_id = $1", gone["subject_id"])
        assert gone["seq"] == last, "the subject's last event"
        before = await db.fetchrow("SELECT * FROM consent_events WHERE subject_id = $1 AND seq = $2",
                                   gone["subject_id"], gone["seq"] - 1)
        earlier = await db.fetchrow("SELECT * FROM consent_events WHERE subject_id = $1 AND purpose_id = $2 "
                                    "AND seq < $3 ORDER BY seq DESC LIMIT 1", gone["subject_id"], gone["purpose_id"],
                                    gone["seq"])
        await db.execute("DELETE FROM consent_events WHERE id = $1", event_id)
        await db.execute("UPDATE subjects SET last_seq = $2, last_hash = $3, last_recorded_at = $4 WHERE id = $1",
                         gone["subject_id"], before["seq"], before["hash"], before["recorded_at"])
        await db.execute("UPDATE consent_states SET status = $3, version = $4, since = $5, last_event_id = $6 "
                         "WHERE subject_id = $1 AND purpose_id = $2", gone["subject_id"], gone["purpose_id"],
                         earlier["status"], earlier["version"], earlier["recorded_at"], earlier["id"])
        # Its duties: those it opened go whole; a record it added to an older duty (a reconfirmation
        # it cancelled) goes, and that duty is rewound to its record before.
        opened = [r["id"] for r in await db.fetch("SELECT id FROM duties WHERE cause_event_id = $1", event_id)]
        added = await db.fetch("SELECT * FROM duty_records WHERE seq > 1 AND detail->>'event_id' = $1",
                               str(event_id))
        removed = [r["id"] for r in await db.fetch("SELECT id FROM duty_records WHERE duty_id = ANY($1::uuid[])",
                                                   opened)] + [r["id"] for r in added]
        await db.execute("DELETE FROM duty_records WHERE id = ANY($1::uuid[])", removed)
        await db.execute("DELETE FROM duties WHERE id = ANY($1::uuid[])", opened)
        for record in added:
            before = await db.fetchrow("SELECT * FROM duty_records WHERE duty_id = $1 AND seq = $2",
                                       record["duty_id"], record["seq"] - 1)
            await db.execute("UPDATE duties SET status = $2, last_seq = $3, last_hash = $4, updated_at = $5, "
                             "fulfilment = NULL, closed_at = NULL WHERE id = $1", record["duty_id"], before["status"],
                             before["seq"], before["hash"], before["recorded_at"])
        kept = await db.fetch("SELECT event_id, subject_id, event_hash FROM ledger_log WHERE tenant_id = $1 "
                              "AND event_id <> ALL($2::uuid[]) ORDER BY idx", tenant, [event_id, *removed])
        for table in ("ledger_log", "ledger_log_nodes", "ledger_checkpoints"):
            await db.execute(f"DELETE FROM {table} WHERE tenant_id = $1", tenant)
        await db.executemany("INSERT INTO ledger_log (tenant_id, idx, event_id, subject_id, event_hash) "
                             "VALUES ($1, $2, $3, $4, $5)",
                             [(tenant, i, r["event_id"], r["subject_id"], r["event_hash"]) for i, r in enumerate(kept)])
        leaves = [merkle.leaf_hash(bytes.fromhex(r["event_hash"])) for r in kept]
        await db.executemany("INSERT INTO ledger_log_nodes (tenant_id, level, idx, hash) VALUES ($1, $2, $3, $4)",
                             [(tenant, lv, ix, h) for lv, ix, h in merkle.new_nodes(0, leaves, lambda lv, ix: b"")])
    return 1 + len(removed)


async def test_a_saved_checkpoint_catches_a_rewrite_the_service_itself_re_signed(app, client, auth, demo, db,
                                                                                  tmp_path, capsys):
    headers = auth(demo)
    await _sign_ups(client, headers, "v", 2)
    await _sign_ups(client, headers, "w", 1)
    withdrawal = await _withdraw(client, headers, "v-0")  # v-0's last event
    first = tmp_path / "first.zip"
    await _bundle(app, demo, first)
    saved = checkpoint_files.write_file(tmp_path / "checkpoints", await checkpoint_rows.latest(app.state.pool, demo))  # CHECKPOINT_DIR's file
    n = json.loads(saved.read_text())["tree_size"]
    result = verify(first, trusted_checkpoint=saved)
    assert result.valid and result.trusted["consistent"] and result.trusted["tree_size"] == n
    webhook_body = tmp_path / "webhook.json"  # the ledger.checkpoint webhook's body also works
    webhook_body.write_text(json.dumps({"type": "ledger.checkpoint", "data": json.loads(saved.read_text())}))
    assert load_trusted_checkpoint(webhook_body) == load_trusted_checkpoint(saved)

    events = await db.fetchval("SELECT count(*) FROM consent_events WHERE tenant_id = $1", demo)
    removed = await _rogue_rewrite_without(db, demo, withdrawal)
    assert removed > 1  # the withdrawal and the duty records it made (its result notice at least)
    # The service signs the rewritten log with its own key: the database alone cannot tell.
    report = (await client.get("/v1/subjects/v-0/consents/verify", headers=headers)).json()
    assert report["valid"] and report["duty_records_checked"] > 0, report["breaks"]
    made = await log.make_checkpoint(app.state.pool, demo, app.state.proof)
    assert made["tree_size"] == n - removed
    second = tmp_path / "second.zip"
    await _bundle(app, demo, second)
    alone = verify(second)
    assert alone.valid and alone.counts["events"] == events - 1, alone.by_kind
    assert alone.counts["events"] + alone.counts["duty_records"] == n - removed
    assert cli(["verify-bundle", str(second)]) == 0
    capsys.readouterr()
    # Against the checkpoint saved before: the events it covered are no longer all there.
    against = verify(second, trusted_checkpoint=saved)
    assert set(against.by_kind) == {"trusted_beyond_events"} and against.trusted["consistent"] is False
    assert cli(["verify-bundle", str(second), "--trusted-checkpoint", str(saved)]) == 1
    assert "trusted_beyond_events" in capsys.readouterr().out

    # The service carries on; once the log is longer again, the first n leaves give another root.
    await _sign_ups(client, headers, "x", 2)
    third = tmp_path / "third.zip"
    await _bundle(app, demo, third)
    assert verify(third).valid
    bare = tmp_path / "saved.jws"
    bare.write_text(load_trusted_checkpoint(saved) + "\n")  # a bare JWS, as an auditor may keep it
    for trusted in (saved, webhook_body, bare):
        against = verify(third, trusted_checkpoint=trusted)
        assert set(against.by_kind) == {"trusted_root"}, against.by_kind
        (found,) = against.breaks
        assert f"first {n} events" in found.detail and "rewritten" in found.detail
    # ... while the same check passes a bundle whose history was left alone.
    assert verify(first, trusted_checkpoint=bare).trusted["consistent"] is True


async def test_a_trusted_checkpoint_of_another_tenant_or_key_is_refused(app, client, auth, demo, new_tenant, tmp_path):
    await _sign_ups(client, auth(demo), "t", 1)
    path = tmp_path / "b.zip"
    await _bundle(app, demo, path)
    other_tenant = await new_tenant()
    from app.demo.loader import load_catalog
    from app.demo.tenants import SMALLTICKET

    async with app.state.sessions() as session, session.begin():
        await load_catalog(session, {**SMALLTICKET, "tenant": {**SMALLTICKET["tenant"], "id": other_tenant}})
    await _sign_ups(client, auth(other_tenant), "t", 1)
    other = await log.make_checkpoint(app.state.pool, other_tenant, app.state.proof)
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert "trusted_tenant" in _kinds(path, trusted_checkpoint=tmp_path / "other.json")
    latest = await checkpoint_rows.latest(app.state.pool, demo)
    forged = keys.Signer(Ed25519PrivateKey.generate()).sign(
        {k: latest[k] for k in ("tenant", "tree_size", "root_hash", "issued_at")}, TYP)
    (tmp_path / "forged.jws").write_text(forged)
    assert "trusted_signature" in _kinds(path, trusted_checkpoint=tmp_path / "forged.jws")


async def test_writing_needs_a_tenant_that_exists(app, tmp_path):
    with pytest.raises(LookupError):
        await _bundle(app, f"t-{uuid.uuid4().hex[:12]}", tmp_path / "none.zip")
    assert not any(tmp_path.iterdir())  # no half-written file left behind


# -- offline: chain version 1 events, made by hand (a ledger created today has none) -----------------


def _v1_row(n: int, prev: str | None, seq: int, subject: uuid.UUID) -> dict[str, Any]:
    t = datetime(2025, 6, 1, 10, 0, seq, 654321, tzinfo=UTC)
    return {"id": uuid.UUID(int=n), "tenant_id": "old", "subject_id": subject, "seq": seq, "purpose_id": uuid.UUID(int=7),
            "version": seq, "action": "granted" if seq == 1 else "withdrawn", "status": "granted" if seq == 1 else "withdrawn",
            "previous_status": None if seq == 1 else "granted", "collection_point_id": None, "notice_id": None,
            "disclosure_hash": None, "method": "web", "actor_type": "subject", "actor_ref": None, "guardian": None,
            "ip": "198.51.100.1", "user_agent": "Mozilla/5.0", "occurred_at": t, "recorded_at": t,
            "request_id": uuid.UUID(int=100 + n), "reason": None, "prev_hash": prev, "chain_version": 1,
            "purpose_key": "marketing-sms", "collection_point_key": None, "notice_key": None, "notice_version": None,
            "notice_sha256": None, "notice_superseded_at": None, "evidence_id": None, "evidence_commitment": None}


def _offline_bundle(path: Path, edit: Callable[[list[dict]], None] = lambda lines: None) -> Path:
    """Two v1 events of one member, then a v2 event chained onto them, signed by a throwaway key."""
    subject = uuid.UUID(int=99)
    lines, prev = [], None
    for i, seq in enumerate((1, 2)):
        row = _v1_row(i + 1, prev, seq, subject)
        legacy = chain.legacy_payload(row)
        event = {**chain.document(row, tenant="old", subject_ref="member-9"), "hash": chain.legacy_hash(legacy)}
        lines.append({"log_index": i, "event": event, "legacy": legacy})
        prev = event["hash"]
    row = {**_v1_row(3, prev, 3, subject), "chain_version": 2, "ip": None, "user_agent": None, "action": "granted",
           "status": "granted", "previous_status": "withdrawn", "reason": "다시 동의"}
    event = chain.document(row, tenant="old", subject_ref="member-9")
    lines.append({"log_index": 2, "event": {**event, "hash": chain.document_hash(event)}})
    edit(lines)
    signer = keys.Signer(Ed25519PrivateKey.generate())
    leaves = [merkle.leaf_hash(bytes.fromhex(line["event"]["hash"])) for line in lines]
    checkpoints = []
    for size in (2, 3):
        payload = {"tenant": "old", "tree_size": size, "root_hash": merkle.root(leaves[:size]).hex(),
                   "issued_at": f"2026-01-01T00:00:0{size}.000000Z"}
        checkpoints.append({**payload, "key_id": signer.kid, "jws": signer.sign(payload, TYP)})
    writer = BundleWriter(path, "old")
    writer.events.write(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    array = writer.start_checkpoints()
    for checkpoint in checkpoints:
        array.add(checkpoint)
    writer.finish(tree_size=3, root_hash=checkpoints[-1]["root_hash"], counts={"events": 3, "chain_v1_events": 2},
                  notices=[], disclosures=[], jwks={"keys": [signer.public_jwk()]}, filename=path.name)
    return path


def test_chain_version_1_events_verify_by_their_v1_payload(tmp_path):
    result = verify(_offline_bundle(tmp_path / "v1.zip"))
    assert result.valid, [b.as_dict() for b in result.breaks]
    assert result.counts["chain_v1_events"] == 2 and result.counts["subjects"] == 1

    def raw_evidence_changed(lines: list[dict]) -> None:
        lines[0]["legacy"]["ip"] = "192.0.2.1"  # what the v1 hash covers

    def printed_disagrees(lines: list[dict]) -> None:
        lines[1]["event"]["status"] = "granted"  # the printed form alone (its hash is the v1 one)

    def payload_missing(lines: list[dict]) -> None:
        del lines[1]["legacy"]

    assert _kinds(_offline_bundle(tmp_path / "a.zip", raw_evidence_changed)) >= {"event_hash"}
    assert _kinds(_offline_bundle(tmp_path / "b.zip", printed_disagrees)) == {"legacy_mismatch"}
    assert _kinds(_offline_bundle(tmp_path / "c.zip", payload_missing)) == {"legacy_mismatch"}


def test_lines_of_any_shape_are_reported_not_raised(tmp_path):
    """Garbage where an event should be: each line is named, the rest still checked."""
    path = _offline_bundle(tmp_path / "ok.zip")
    members = _members(path)
    lines = _lines(members)
    for garbage, kind in ((b"", "malformed_line"), (b"[1, 2]", "malformed_line"), (b"{\"event\": 5}", "malformed_line"),
                          (b"not json", "malformed_line"),
                          (orjson.dumps({"log_index": 2, "event": {**orjson.loads(lines[2])["event"], "seq": "3"}}),
                           "malformed_event"),
                          (orjson.dumps({"log_index": 2, "event": {**orjson.loads(lines[2])["event"], "seq": 3.0}}),
                           "malformed_event"),
                          (orjson.dumps({"log_index": 2, "event": {**orjson.loads(lines[2])["event"], "extra": 1}}),
                           "malformed_event")):
        result = verify(_write_members(tmp_path / "bad.zip", _with_lines(members, lines[:2] + [garbage])))
        assert kind in result.by_kind, (garbage, result.by_kind)
        assert any(b.line == 3 for b in result.breaks), garbage


def test_a_canonical_form_rfc8785_gives_is_what_the_fast_path_hashes(tmp_path):
    """The verifier's fast path (orjson's sorted output, for documents of the exact v2 shape) against
    RFC 8785 itself, on documents with Korean text, escapes, DEL, astral characters and nulls."""
    import random

    import rfc8785

    from app.proof.verify_bundle import _shape_ok

    rng = random.Random(8)
    alphabet = "aZ09 \"\\/\b\f\n\r\t\x00\x1f\x7f한글동의철회 \u2028\U0001f600é"
    base = orjson.loads(_members(_offline_bundle(tmp_path / "fast.zip"))["events.ndjson"]
                        .split(b"\n")[2])["event"]
    for _ in range(300):
        doc = {**base, "reason": "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))),
               "subject_id": "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))}
        doc.pop("hash")
        assert _shape_ok({**doc, "hash": "0" * 64})
        assert orjson.dumps(doc, option=orjson.OPT_SORT_KEYS) == rfc8785.dumps(doc) == canonical_json(doc)


def test_a_large_bundle_is_checked_by_worker_processes_alike(tmp_path):
    """jobs=2 gives the same result as jobs=1, breaks included (blocks are stitched in file order)."""
    import bench.proof as bench

    path = tmp_path / "big.zip"
    bench.make(3000, path, every=700)
    members = _members(path)
    lines = _lines(members)
    lines[1500], lines[1501] = lines[1501], lines[1500]
    tampered = _write_members(tmp_path / "t.zip", _with_lines(members, lines))
    import app.proof.verify_bundle as vb

    saved = vb.BLOCK
    vb.BLOCK = 64 << 10  # many blocks, so chains and subtrees cross their edges
    try:
        for p in (path, tampered):
            one, two = verify(p, jobs=1), verify(p, jobs=2)
            assert (one.valid, dict(one.by_kind), one.counts) == (two.valid, dict(two.by_kind), two.counts)
            assert [b.as_dict() for b in one.breaks] == [b.as_dict() for b in two.breaks]
        assert verify(path, jobs=2).valid
    finally:
        vb.BLOCK = saved


async def test_audit_bundle_command_writes_a_bundle_verify_bundle_accepts(client, auth, demo, settings, tmp_path):
    """`consent-ledger audit bundle` as an operator runs it: DATABASE_URL and the key files from the
    environment, in a process of its own; then `verify-bundle` on what it wrote."""
    import asyncio
    import os

    await _sign_ups(client, auth(demo), "c", 2)
    out = tmp_path / "cli.zip"
    env = {**os.environ, "DATABASE_URL": settings.database_url, "SIGNING_KEY_FILE": str(settings.signing_key_file),
           "LEDGER_SECRET_FILE": str(settings.ledger_secret_file)}

    async def run(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(sys.executable, "-m", "app.cli", *args, cwd=ROOT, env=env,
                                                       stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await asyncio.wait_for(process.communicate(), 120)
        return process.returncode, output.decode()

    code, output = await run("audit", "bundle", "--tenant", demo, "--out", str(out))
    assert code == 0, output
    assert f"wrote {out}" in output and demo in output
    code, output = await run("verify-bundle", str(out))
    assert code == 0 and "VALID" in output, output
    code, output = await run("audit", "bundle", "--tenant", "t-no-such-tenant", "--out", str(tmp_path / "x.zip"))
    assert code == 2 and "no tenant" in output, output


def test_checkpoints_json_is_read_line_by_line_or_whole(tmp_path):
    path = _offline_bundle(tmp_path / "ok.zip")
    members = _members(path)
    text = members["checkpoints.json"]
    assert text.startswith(b"[\n{") and text.endswith(b"}\n]\n") and text.count(b"\n") == 4  # one per line
    assert json.loads(text) == json.loads(json.dumps(json.loads(text)))  # and valid JSON
    whole = {**members, "checkpoints.json": json.dumps(json.loads(text), indent=1).encode()}
    assert verify(_write_members(tmp_path / "whole.zip", whole)).valid  # laid out otherwise: parsed whole
    for broken in (text.replace(b"},\n", b"}\n", 1), text.replace(b"\n]", b""), text + b"[]\n", b"{not json"):
        result = verify(_write_members(tmp_path / "broken.zip", {**members, "checkpoints.json": broken}))
        assert "malformed_member" in result.by_kind, broken


def test_verify_bundle_needs_no_database_library():
    """Offline means offline: the verifier and its command import neither asyncpg, SQLAlchemy nor FastAPI."""
    code = ("import sys, app.proof.verify_bundle, app.proof.cli; "
            "print(sorted(m for m in ('asyncpg', 'sqlalchemy', 'sqlmodel', 'fastapi') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_a_line_with_another_second_member_is_named(tmp_path):
    members = _members(_offline_bundle(tmp_path / "ok.zip"))
    lines = _lines(members)
    line = orjson.loads(lines[2])
    renamed = orjson.dumps({"event": line["event"], "index": line["log_index"]})  # two members, not log_index
    result = verify(_write_members(tmp_path / "bad.zip", _with_lines(members, lines[:2] + [renamed])))
    assert "malformed_line" in result.by_kind and "log_order" not in result.by_kind


def test_subtrees_of_a_block_fold_onto_the_leaves_before_it_into_every_root():
    """A block's pieces (and its pieces up to each checkpoint size inside it), pushed onto the stack of
    everything before it, give exactly the RFC 9162 root of each prefix, wherever the block starts."""
    import os
    import random

    from app.proof.verify_bundle import _Log, _subtrees

    rng = random.Random(9162)
    hashes = [os.urandom(32) for _ in range(700)]
    leaves = [merkle.leaf_hash(h) for h in hashes]
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(hashes)), rng.randint(0, 6)))
        targets = set(rng.sample(range(0, len(hashes) + 1), 12))
        log = _Log(targets)
        for start, end in zip([0] + cuts, cuts + [len(hashes)]):
            pieces, roots = _subtrees(hashes[start:end], start, log.within(start, end - start))
            block = type("B", (), {"pieces": pieces, "roots": roots})
            log.add(block, end - start)
        assert log.size == len(hashes)
        assert log.roots == {t: merkle.root(leaves[:t]) for t in targets}


def test_checkpoint_signatures_in_batches_agree_with_keys_verify_token_by_token():
    """The batch check accepts a token with an already accepted header only when keys.verify would;
    every other verdict is keys.verify's own."""
    from app.proof.verify_bundle import _signature_failures

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    private = Ed25519PrivateKey.generate()
    signer, other = keys.Signer(private), Ed25519PrivateKey.generate()
    keyset = {"keys": [signer.public_jwk()]}
    good = [signer.sign({"tenant": "t", "tree_size": n, "root_hash": "ab" * 32, "issued_at": "x"}, TYP)
            for n in range(1, 4)]
    head = good[0].split(".")[0]

    def signed(payload: bytes, key=private) -> str:
        signing_input = f"{head}.{b64(payload)}"
        return f"{signing_input}.{b64(key.sign(signing_input.encode()))}"

    tokens = [
        good[0], good[1],
        signed(b'{"tenant":"t","tree_size":5,"tree_size":6}'),  # a repeated member, validly signed
        signed(b'[1, 2]'),  # not an object
        signed(b'{"tenant":"t"}', other),  # same header, another key
        good[2][:-2] + ("AA" if not good[2].endswith("AA") else "BA"),  # a damaged signature
        good[2] + "=",  # padding
        ".".join(good[2].split(".")[:2]),  # two segments
        good[2].replace(".", "..", 1),
        None, good[2],
    ]
    batch = _signature_failures(tokens, keyset)

    def one(token) -> str | None:
        if not isinstance(token, str):
            return "no JWS (jws)"
        try:
            keys.verify(token, keyset, typ=TYP)
            return None
        except keys.ProofError as exc:
            return str(exc)

    assert batch == [one(t) for t in tokens]
    assert batch[0] is batch[1] is batch[-1] is None and all(why is not None for why in batch[2:-1])


def test_the_readme_says_when_v1_events_carry_raw_evidence(tmp_path):
    readme = _members(_offline_bundle(tmp_path / "v1.zip"))["README.md"].decode()
    assert "chain version 1 events carry their IP address" in readme and "체인 버전 1 이벤트 2건" in readme
