"""Signing keys and the ledger secret: tokens verify with an unmodified third-party JOSE library
(joserfc), our verifier refuses every classic JWS trick, and bad configuration fails clearly."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jws
from joserfc.jwk import OKPKey

from app.proof import keys

TYP = "consent-ledger-checkpoint+jwt"
PAYLOAD = {"tenant": "smallticket", "tree_size": 8, "issued_at": "2026-11-22T19:21:11.123456Z",
           "root_hash": "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"}

# joserfc warns that RFC 9864 deprecates the polymorphic "EdDSA" name in favour of "Ed25519";
# PyJWT does not know "Ed25519" yet, and docs/proof.md specifies EdDSA.
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict, payload: bytes, sign) -> str:
    """A compact JWS put together by hand, signed by `sign(signing_input) -> bytes`."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload)}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def signer(key: Ed25519PrivateKey) -> keys.Signer:
    return keys.Signer(key)


def pem(private_key, password: bytes | None = None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def test_sign_and_verify_round_trip(tmp_path: Path) -> None:
    signer = keys.generate_key_file(tmp_path / "keys" / "signing.pem")
    assert stat.S_IMODE((tmp_path / "keys" / "signing.pem").stat().st_mode) == 0o600
    loaded = keys.load_signer(tmp_path / "keys" / "signing.pem", None)
    assert loaded is not None and loaded.kid == signer.kid
    token = loaded.sign(PAYLOAD, TYP)
    assert token == signer.sign(PAYLOAD, TYP)  # RFC 8785 payload + deterministic Ed25519
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "EdDSA", "kid": signer.kid, "typ": TYP}
    assert keys.verify(token, keys.jwks(signer, None), TYP) == PAYLOAD
    assert keys.verify(token, keys.jwks(signer, None)) == PAYLOAD
    assert signer.public_jwk() == {"kty": "OKP", "crv": "Ed25519", "x": signer.public_jwk()["x"],
                                   "kid": signer.kid, "alg": "EdDSA", "use": "sig"}
    with pytest.raises(FileExistsError):
        keys.generate_key_file(tmp_path / "keys" / "signing.pem")  # never replaces a key


def test_tokens_interoperate_with_joserfc(key: Ed25519PrivateKey, signer: keys.Signer) -> None:
    public = OKPKey.import_key(signer.public_jwk())
    assert not public.is_private
    assert public.thumbprint() == signer.kid  # RFC 7638, computed by joserfc
    token = signer.sign(PAYLOAD, TYP)
    obj = jws.deserialize_compact(token, public, algorithms=["EdDSA"])
    assert json.loads(obj.payload) == PAYLOAD
    assert obj.headers() == {"alg": "EdDSA", "kid": signer.kid, "typ": TYP}
    # And the other way: a token joserfc signs with the same key verifies with ours.
    theirs = jws.serialize_compact({"alg": "EdDSA", "kid": signer.kid, "typ": TYP},
                                   json.dumps(PAYLOAD), OKPKey.import_key(pem(key)), algorithms=["EdDSA"])
    assert keys.verify(theirs, keys.jwks(signer, None), TYP) == PAYLOAD


def test_thumbprint_rfc8037_vector() -> None:
    # RFC 8037 appendix A.3: the thumbprint of the appendix A.2 public key.
    assert keys.thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo") == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def refused(token: str, jwks: dict, match: str, typ: str | None = TYP) -> None:
    with pytest.raises(keys.ProofError, match=match):
        keys.verify(token, jwks, typ)


def test_verify_refuses_forgeries(key: Ed25519PrivateKey, signer: keys.Signer) -> None:
    jwks = keys.jwks(signer, None)
    token = signer.sign(PAYLOAD, TYP)
    good = {"alg": "EdDSA", "kid": signer.kid, "typ": TYP}
    body = json.dumps(PAYLOAD).encode()
    other = Ed25519PrivateKey.generate()

    refused(token, keys.jwks(keys.Signer(other), None), "no key with kid")
    refused(forge(good, body, other.sign), jwks, "signature does not verify")  # our kid, another key
    head, _, sig = token.split(".")
    refused(f"{head}.{b64(json.dumps({**PAYLOAD, 'tree_size': 9}).encode())}.{sig}", jwks, "signature does not verify")
    refused(f"{head}.{token.split('.')[1]}.{sig[:-4]}AAAA", jwks, "signature does not verify")
    refused(forge({**good, "alg": "none"}, body, lambda _: b""), jwks, "alg 'none' is not accepted")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    spki = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for secret in (raw, spki, signer.public_jwk()["x"].encode(), json.dumps(signer.public_jwk()).encode()):
        hs = forge({**good, "alg": "HS256"}, body, lambda data, s=secret: hmac.new(s, data, hashlib.sha256).digest())
        refused(hs, jwks, "alg 'HS256' is not accepted")
    refused(forge({**good, "crit": ["exp"], "exp": 1}, body, key.sign), jwks, "crit")
    refused(forge({**good, "jwk": signer.public_jwk()}, body, key.sign), jwks, "unexpected header member")
    refused(forge({"alg": "EdDSA", "typ": TYP}, body, key.sign), jwks, "kid")
    refused(token, jwks, "typ is", typ="consent-ledger-receipt+jwt")
    refused(forge(good, b"[1, 2]", key.sign), jwks, "not a JSON object")
    refused(forge(good, b'{"tree_size": 8, "tree_size": 9}', key.sign), jwks, "repeats a member")
    refused("not.a.token", jwks, "not a compact JWS")
    altered = raw[:-1] + bytes([raw[-1] ^ 1])  # always differs from the real key
    refused(token, {"keys": [{**signer.public_jwk(), "x": b64(altered)}]}, "thumbprint")
    refused(token, {"keys": [signer.public_jwk(), signer.public_jwk()]}, "more than one key")
    refused(token, {}, "not a JWKS")


def test_retired_key_still_verifies(tmp_path: Path, signer: keys.Signer) -> None:
    old_key = Ed25519PrivateKey.generate()
    old = keys.Signer(old_key)
    old_token = old.sign(PAYLOAD, TYP)
    retired = tmp_path / "retired.json"
    public_only = {k: v for k, v in old.public_jwk().items() if k not in ("alg", "use")}
    retired.write_text(json.dumps({"keys": [public_only, signer.public_jwk()]}))
    key_set = keys.jwks(signer, retired)
    assert key_set == {"keys": [signer.public_jwk(), old.public_jwk()]}  # current first, no duplicate
    assert keys.verify(old_token, key_set, TYP) == PAYLOAD
    assert keys.verify(signer.sign(PAYLOAD, TYP), key_set, TYP) == PAYLOAD
    # A token from the retired key's holder still verifies, but only with that key's kid.
    refused(forge({"alg": "EdDSA", "kid": signer.kid, "typ": TYP}, b"{}", old_key.sign), key_set, "signature")

    private = OKPKey.import_key(pem(Ed25519PrivateKey.generate())).as_dict(private=True)
    for entries, match in [
        ([private], 'SIGNING_PUBLIC_KEYS_FILE: keys\\[0\\] carries a private key \\("d"\\)'),
        ([{**old.public_jwk(), "kid": "not-the-thumbprint"}], "thumbprint"),
        ([{**old.public_jwk(), "crv": "X25519"}], "not an Ed25519"),
        ([{**old.public_jwk(), "x": "short"}], "x is not a base64url Ed25519 public key"),
    ]:
        retired.write_text(json.dumps({"keys": entries}))
        with pytest.raises(ValueError, match=match):
            keys.jwks(signer, retired)
    retired.write_text("[]")
    with pytest.raises(ValueError, match="SIGNING_PUBLIC_KEYS_FILE: .* is not a JWKS"):
        keys.jwks(signer, retired)
    with pytest.raises(ValueError, match="SIGNING_PUBLIC_KEYS_FILE: cannot read"):
        keys.jwks(signer, tmp_path / "missing.json")


def test_load_signer_errors_are_clear(tmp_path: Path) -> None:
    assert keys.load_signer(None, None) is None
    ed = Ed25519PrivateKey.generate()
    env_pem = pem(ed).decode()
    assert keys.load_signer(None, env_pem).kid == keys.Signer(ed).kid
    assert keys.load_signer(None, env_pem.replace("\n", "\\n")).kid == keys.Signer(ed).kid
    cases = {
        "missing.pem": (None, "SIGNING_KEY_FILE: cannot read .*missing.pem"),
        "garbage.pem": (b"hello", "SIGNING_KEY_FILE: not a PEM private key"),
        "ec.pem": (pem(ec.generate_private_key(ec.SECP256R1())), "SIGNING_KEY_FILE: not an Ed25519 private key"),
        "locked.pem": (pem(ed, b"pw"), "SIGNING_KEY_FILE: the key is encrypted"),
    }
    for name, (content, match) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=match):
            keys.load_signer(tmp_path / name, None)
    with pytest.raises(ValueError, match="SIGNING_KEY: not a PEM private key"):
        keys.load_signer(None, "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match="SIGNING_KEY_FILE or SIGNING_KEY, not both"):
        keys.load_signer(tmp_path / "x.pem", env_pem)


def test_ledger_secret(tmp_path: Path) -> None:
    assert keys.load_secret(None, None) is None and keys.load_secret(None, "") is None
    made = keys.generate_secret_file(tmp_path / "secret")
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    assert len(made) >= 32 and keys.load_secret(tmp_path / "secret", None) == made
    with pytest.raises(FileExistsError):
        keys.generate_secret_file(tmp_path / "secret")
    assert keys.load_secret(None, "x" * 32) == b"x" * 32
    (tmp_path / "text").write_text("y" * 40 + "\n")
    assert keys.load_secret(tmp_path / "text", None) == b"y" * 40
    with pytest.raises(ValueError, match="LEDGER_SECRET: the ledger secret is 31 bytes; it must be at least 32"):
        keys.load_secret(None, "x" * 31)
    (tmp_path / "short").write_text("short\n")
    with pytest.raises(ValueError, match="LEDGER_SECRET_FILE: the ledger secret is 5 bytes"):
        keys.load_secret(tmp_path / "short", None)
    with pytest.raises(ValueError, match="LEDGER_SECRET_FILE: cannot read"):
        keys.load_secret(tmp_path / "missing", None)
    with pytest.raises(ValueError, match="not both"):
        keys.load_secret(tmp_path / "secret", "x" * 32)


def test_seal_and_commitment() -> None:
    secret = b"s" * 32
    event_hash = hashlib.sha256(b"event").hexdigest()
    assert keys.seal(secret, event_hash) == hmac.new(
        secret, b"consent-ledger seal v1\n" + event_hash.encode(), hashlib.sha256).hexdigest()
    assert keys.seal(b"t" * 32, event_hash) != keys.seal(secret, event_hash)
    evidence = {"id": "0f8b", "ip": "203.0.113.7", "user_agent": None, "guardian": None}
    reordered = dict(reversed(list(evidence.items())))
    assert keys.commitment(secret, evidence) == keys.commitment(secret, reordered) == hmac.new(
        secret, b'{"guardian":null,"id":"0f8b","ip":"203.0.113.7","user_agent":null}', hashlib.sha256).hexdigest()
    assert keys.commitment(secret, {**evidence, "ip": "203.0.113.8"}) != keys.commitment(secret, evidence)
