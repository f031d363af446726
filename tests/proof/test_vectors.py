"""docs/proof-test-vectors.{md,json} cannot drift: every vector is recomputed from the JSON with the
project's own code, the events' canonical bytes with the `rfc8785` package directly (an independent
RFC 8785), the Merkle values with a naive RFC 9162 written here, and the generator's output must be
what is committed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
from pathlib import Path

import pytest
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from app.consents import chain
from app.core.hashing import canonical_json
from app.proof import keys, merkle

DOCS = Path(__file__).resolve().parents[2] / "docs"
VECTORS = json.loads((DOCS / "proof-test-vectors.json").read_text("utf-8"))
TYP = "consent-ledger-checkpoint+jwt"


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def naive_root(leaves: list[bytes]) -> bytes:
    """RFC 9162 2.1.1, as written: split at the largest power of two below n."""
    if not leaves:
        return _sha(b"")
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return _sha(b"\x01" + naive_root(leaves[:k]) + naive_root(leaves[k:]))


def _b64u_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_the_generator_reproduces_the_committed_files() -> None:
    spec = importlib.util.spec_from_file_location("make_test_vectors", DOCS / "make_test_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text, doc = module.render()
    assert (DOCS / "proof-test-vectors.json").read_text("utf-8") == text, "run docs/make_test_vectors.py"
    assert (DOCS / "proof-test-vectors.md").read_text("utf-8") == doc, "run docs/make_test_vectors.py"


@pytest.mark.parametrize("n", range(3))
def test_event_canonical_bytes_and_hash(n: int) -> None:
    vector = VECTORS["events"][n]
    event = vector["event"]
    document = {k: v for k, v in event.items() if k != "hash"}
    assert document == vector["document"]
    independent = rfc8785.dumps(document)  # the reference implementation, not our fast path
    assert independent == vector["canonical"].encode("utf-8")
    assert len(independent) == vector["canonical_length"]
    assert canonical_json(document) == independent
    assert hashlib.sha256(independent).hexdigest() == vector["hash"] == event["hash"]
    assert chain.document_hash(event) == vector["hash"]
    assert event["tenant"] == VECTORS["tenant"] and event["seq"] == n + 1


def test_the_vectors_cover_korean_text_nulls_and_escapes() -> None:
    canon = [e["canonical"] for e in VECTORS["events"]]
    assert all("회원-0001" in c for c in canon)  # non-ASCII written as itself
    assert '"prev_hash":null' in canon[0] and '"reason":null' in canon[0]
    assert '\\n\\"즉시\\"' in canon[2]  # a newline and quotes, escaped the RFC 8785 way


def test_the_chain_links() -> None:
    events = [v["event"] for v in VECTORS["events"]]
    assert events[0]["prev_hash"] is None
    for before, after in zip(events, events[1:]):
        assert after["prev_hash"] == before["hash"]
        assert after["seq"] == before["seq"] + 1
        assert after["recorded_at"] >= before["recorded_at"]
        assert after["subject_id"] == before["subject_id"]


def test_notice_and_disclosures() -> None:
    notice = VECTORS["notice"]
    assert hashlib.sha256(notice["body"].encode("utf-8")).hexdigest() == notice["sha256"]
    by_purpose = {}
    for d in VECTORS["disclosures"]:
        assert hashlib.sha256(rfc8785.dumps(d["content"])).hexdigest() == d["hash"]
        by_purpose[d["purpose"]] = d["hash"]
    for v in VECTORS["events"]:
        event = v["event"]
        if event["notice"] is not None:
            assert (event["notice"]["id"], event["notice"]["sha256"]) == (notice["id"], notice["sha256"])
        if event["disclosure_hash"] is not None:
            assert by_purpose[event["purpose"]] == event["disclosure_hash"]


def test_merkle_leaves_roots_and_proofs() -> None:
    m = VECTORS["merkle"]
    leaves = []
    for entry, v in zip(m["leaves"], VECTORS["events"]):
        data = bytes.fromhex(entry["data"])
        assert entry["data"] == v["hash"] and len(data) == 32
        leaf = _sha(b"\x00" + data)
        assert leaf == merkle.leaf_hash(data) and leaf.hex() == entry["leaf_hash"]
        leaves.append(leaf)
    assert m["empty_root"] == naive_root([]).hex() == merkle.EMPTY_ROOT.hex()
    for r in m["roots"]:
        assert naive_root(leaves[:r["tree_size"]]).hex() == merkle.root(leaves[:r["tree_size"]]).hex() == r["root_hash"]
    roots = {r["tree_size"]: bytes.fromhex(r["root_hash"]) for r in m["roots"]}

    def get(level: int, idx: int) -> bytes:
        return naive_root(leaves[idx << level:(idx + 1) << level])

    for p in m["inclusion"]:
        path = [bytes.fromhex(h) for h in p["audit_path"]]
        assert path == merkle.inclusion_proof(p["leaf_index"], p["tree_size"], get)
        assert merkle.verify_inclusion(bytes.fromhex(p["leaf_hash"]), p["leaf_index"], p["tree_size"], path,
                                       roots[p["tree_size"]])
    for p in m["consistency"]:
        proof = [bytes.fromhex(h) for h in p["proof"]]
        assert proof == merkle.consistency_proof(p["first"], p["second"], get)
        assert bytes.fromhex(p["first_root"]) == roots[p["first"]]
        assert merkle.verify_consistency(p["first"], p["second"], roots[p["first"]], roots[p["second"]], proof)


def test_checkpoint_signed_with_the_test_key() -> None:
    c = VECTORS["checkpoint"]
    assert "TEST KEY" in c["WARNING"]
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(c["test_private_key_seed_hex"]))
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = c["public_jwk"]
    assert _b64u_decode(jwk["x"]) == public
    assert rfc8785.dumps({"crv": "Ed25519", "kty": "OKP", "x": jwk["x"]}).decode() == c["kid_input"]
    assert base64.urlsafe_b64encode(_sha(c["kid_input"].encode())).rstrip(b"=").decode() == jwk["kid"]
    # the token as the service makes it (Ed25519 is deterministic) ...
    assert keys.Signer(key).sign(c["payload"], TYP) == c["jws"]
    # ... and checked by hand: header, payload bytes, signature over the signing input
    header_b64, payload_b64, signature_b64 = c["jws"].split(".")
    assert f"{header_b64}.{payload_b64}" == c["signing_input"]
    assert json.loads(_b64u_decode(header_b64)) == c["header"] == {"alg": "EdDSA", "kid": jwk["kid"], "typ": TYP}
    assert _b64u_decode(payload_b64) == rfc8785.dumps(c["payload"]) == c["payload_canonical"].encode()
    assert _b64u_decode(signature_b64).hex() == c["signature_hex"]
    Ed25519PublicKey.from_public_bytes(public).verify(_b64u_decode(signature_b64), c["signing_input"].encode("ascii"))
    assert keys.verify(c["jws"], {"keys": [jwk]}, typ=TYP) == c["payload"]
    m = VECTORS["merkle"]
    assert c["payload"]["root_hash"] == m["roots"][-1]["root_hash"] and c["payload"]["tree_size"] == 3


def test_evidence_commitment_and_seal() -> None:
    v = VECTORS["evidence_commitment"]
    secret = v["test_ledger_secret"].encode()
    assert rfc8785.dumps(v["evidence"]).decode() == v["canonical"]
    assert hmac.new(secret, v["canonical"].encode(), hashlib.sha256).hexdigest() == v["commitment"]
    assert keys.commitment(secret, v["evidence"]) == v["commitment"]
    assert VECTORS["events"][0]["event"]["evidence"]["commitment"] == v["commitment"]
    first = VECTORS["events"][0]["hash"]
    assert hmac.new(secret, b"consent-ledger seal v1\n" + first.encode(), hashlib.sha256).hexdigest() == \
        v["seal_of_event_1"] == keys.seal(secret, first)


def test_chain_version_1() -> None:
    v = VECTORS["chain_version_1"]
    serialized = json.dumps(v["payload"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert serialized == v["serialized"]
    assert hashlib.sha256(serialized.encode("utf-8")).hexdigest() == v["hash"] == chain.legacy_hash(v["payload"])
    assert v["payload"]["chain_version"] == 1 and set(v["payload"]) == set(chain.LEGACY_FIELDS) | {"chain_version"}
