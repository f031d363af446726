"""The keys that make records prove something, kept outside the database (docs/proof.md).

- An Ed25519 key signs checkpoints and receipts as compact JWS (alg EdDSA). Its kid is the RFC 7638
  thumbprint, so anyone holding the public JWK can recompute it; retired public keys stay listed so
  tokens signed before a rotation still verify.
- The ledger secret (32+ bytes) makes event seals and evidence commitments: HMACs that a database
  user without the secret cannot forge, nor brute-force back to an erased IP address.

Verification is deliberately narrow: one algorithm (EdDSA), the three header members we write, no
`crit` extensions. A verifier that accepts more than the signer produces is where JWS goes wrong.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

import jwt
import rfc8785
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from app.core.hashing import canonical_document, canonical_json  # RFC 8785 bytes, through its fast paths

ALG = "EdDSA"
SECRET_MIN_BYTES = 32
SEAL_CONTEXT = b"consent-ledger seal v1\n"
_HEADER_MEMBERS = frozenset({"alg", "kid", "typ"})


class ProofError(ValueError):
    """A token or key set that does not prove what it claims; the message says why."""


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _public_bytes(x: Any) -> bytes:
    """The 32-byte Ed25519 public key from a JWK's x; only the canonical unpadded base64url form."""
    try:
        raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)) if isinstance(x, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32 or _b64u(raw) != x:
        raise ValueError("x is not a base64url Ed25519 public key (32 bytes)")
    return raw


def thumbprint(x: str) -> str:
    """RFC 7638 JWK thumbprint of an Ed25519 public key: SHA-256 of its required members, canonical."""
    return _b64u(hashlib.sha256(rfc8785.dumps({"crv": "Ed25519", "kty": "OKP", "x": x})).digest())


def _public_jwk(x: str) -> dict[str, str]:
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": thumbprint(x), "alg": ALG, "use": "sig"}


class Signer:
    """The current signing key. Payloads are serialised with RFC 8785, so with Ed25519's deterministic
    signatures the same payload always gives the same token."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._jwk = _public_jwk(_b64u(raw))
        self.kid = self._jwk["kid"]

    def __repr__(self) -> str:
        return f"Signer(kid={self.kid!r})"

    def public_jwk(self) -> dict[str, str]:
        return dict(self._jwk)

    def sign(self, payload: dict[str, Any], typ: str) -> str:
        return jwt.PyJWS().encode(canonical_json(payload), self._key, algorithm=ALG,
                                  headers={"kid": self.kid, "typ": typ})


def _write_new(path: Path, data: bytes) -> None:
    """Create `path` readable by its owner only; never overwrite (a replaced key or secret would
    orphan every seal and signature made with the old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)


def _read(path: Path, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None


def _private_key(data: bytes, setting: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(f"{setting}: the key is encrypted; give an unencrypted PKCS#8 PEM") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{setting}: not a PEM private key (expected PKCS#8 Ed25519)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(  # noqa: TRY004 - a configuration error, reported like the others
            f"{setting}: not an Ed25519 private key (checkpoints and receipts are signed with EdDSA)")
    return key


def load_signer(key_file: Path | None, key_pem: str | None) -> Signer | None:
    """The signer from SIGNING_KEY_FILE or SIGNING_KEY (PEM); None when neither is set."""
    if key_file is not None and key_pem:
        raise ValueError("set SIGNING_KEY_FILE or SIGNING_KEY, not both")
    if key_file is not None:
        return Signer(_private_key(_read(key_file, "SIGNING_KEY_FILE"), "SIGNING_KEY_FILE"))
    if key_pem:
        if "\n" not in key_pem:  # a PEM squeezed into one environment line with literal \n
            key_pem = key_pem.replace("\\n", "\n")
        return Signer(_private_key(key_pem.encode(), "SIGNING_KEY"))
    return None


def generate_key_file(path: Path) -> Signer:
    """Write a new Ed25519 key (PKCS#8 PEM, mode 0600) to `path`, which must not exist."""
    key = Ed25519PrivateKey.generate()
    _write_new(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return Signer(key)


def _retired_keys(path: Path) -> list[dict[str, str]]:
    setting = "SIGNING_PUBLIC_KEYS_FILE"
    data = _read(path, setting)
    try:
        entries = json.loads(data)
    except ValueError:
        entries = None
    entries = entries.get("keys") if isinstance(entries, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{setting}: {path} is not a JWKS ({{\"keys\": [...]}})")  # noqa: TRY004 - bad file content
    out = []
    for n, entry in enumerate(entries):
        where = f"{setting}: keys[{n}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not a JSON object")  # noqa: TRY004 - bad file content
        if "d" in entry:
            raise ValueError(f"{where} carries a private key (\"d\"); list public keys only")
        if entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519" or entry.get("alg", ALG) != ALG:
            raise ValueError(f"{where} is not an Ed25519 (OKP, EdDSA) key")
        try:
            _public_bytes(entry.get("x"))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        jwk = _public_jwk(entry["x"])
        if entry.get("kid", jwk["kid"]) != jwk["kid"]:
            raise ValueError(f"{where}: kid is not the key's RFC 7638 thumbprint ({jwk['kid']})")
        out.append(jwk)
    return out


def jwks(signer: Signer | None, retired_file: Path | None = None) -> dict[str, list[dict[str, str]]]:
    """The public keys tokens verify with: the current one, then the retired ones (public members only)."""
    keys = [signer.public_jwk()] if signer is not None else []
    for jwk in _retired_keys(retired_file) if retired_file is not None else []:
        if all(k["kid"] != jwk["kid"] for k in keys):
            keys.append(jwk)
    return {"keys": keys}


def _verification_key(jwks: dict[str, Any], kid: str) -> Ed25519PublicKey:
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list):
        raise ProofError("the key set is not a JWKS (no \"keys\" list)")
    found = [k for k in keys if isinstance(k, dict) and k.get("kid") == kid]
    if not found:
        raise ProofError(f"no key with kid {kid!r} in the key set")
    if len(found) > 1:
        raise ProofError(f"more than one key with kid {kid!r} in the key set")
    jwk = found[0]
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or jwk.get("alg", ALG) != ALG:
        raise ProofError(f"key {kid!r} is not an Ed25519 (OKP, EdDSA) key")
    try:
        raw = _public_bytes(jwk.get("x"))
    except ValueError as exc:
        raise ProofError(f"key {kid!r}: {exc}") from None
    if thumbprint(jwk["x"]) != kid:
        raise ProofError(f"key {kid!r}: kid is not the key's RFC 7638 thumbprint")
    return Ed25519PublicKey.from_public_bytes(raw)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ProofError("the payload repeats a member")
    return out


def verify(token: str, jwks: dict[str, Any], typ: str | None = None) -> dict[str, Any]:
    """The payload of a compact JWS signed (EdDSA) by a key of `jwks`, of type `typ` if given;
    ProofError otherwise."""
    if not isinstance(token, str):
        raise ProofError("the token is not a string")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise ProofError(f"not a compact JWS: {exc}") from None
    if "crit" in header:
        raise ProofError("critical header extensions (crit) are not accepted")
    if header.get("alg") != ALG:
        raise ProofError(f"alg {header.get('alg')!r} is not accepted: only EdDSA (Ed25519)")
    if unexpected := sorted(set(header) - _HEADER_MEMBERS):
        raise ProofError(f"unexpected header member(s): {', '.join(unexpected)}")
    if typ is not None and header.get("typ") != typ:
        raise ProofError(f"typ is {header.get('typ')!r}, expected {typ!r}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ProofError("the header names no key (kid)")
    key = _verification_key(jwks, kid)
    try:
        parts = jwt.PyJWS(algorithms=[ALG]).decode_complete(token, key=key, algorithms=[ALG])
    except jwt.InvalidSignatureError:
        raise ProofError(f"the signature does not verify with key {kid!r}") from None
    except jwt.PyJWTError as exc:
        raise ProofError(f"not a valid JWS: {exc}") from None
    try:
        payload = json.loads(parts["payload"], object_pairs_hook=_no_duplicates)
    except ValueError as exc:
        raise ProofError(exc.args[0] if isinstance(exc, ProofError) else "the payload is not JSON") from None
    if not isinstance(payload, dict):
        raise ProofError("the payload is not a JSON object")
    return payload


# -- the ledger secret -----------------------------------------------------------------------------


def load_secret(file: Path | None, value: str | None) -> bytes | None:
    """The ledger secret from LEDGER_SECRET_FILE or LEDGER_SECRET, taken as raw text (outer
    whitespace, such as a file's final newline, dropped); None when neither is set."""
    if file is not None and value:
        raise ValueError("set LEDGER_SECRET_FILE or LEDGER_SECRET, not both")
    if file is not None:
        setting, data = "LEDGER_SECRET_FILE", _read(file, "LEDGER_SECRET_FILE").strip()
    elif value:
        setting, data = "LEDGER_SECRET", value.strip().encode("utf-8")
    else:
        return None
    if len(data) < SECRET_MIN_BYTES:
        raise ValueError(f"{setting}: the ledger secret is {len(data)} bytes; it must be at least "
                         f"{SECRET_MIN_BYTES} random bytes")
    return data


def generate_secret_file(path: Path) -> bytes:
    """Write a new ledger secret (64 base64url characters, 384 random bits; mode 0600) to `path`,
    which must not exist; returns it as `load_secret` will read it."""
    text = secrets.token_urlsafe(48)
    _write_new(path, text.encode("ascii") + b"\n")
    return text.encode("ascii")


@functools.lru_cache(maxsize=8)
def _sealing(secret: bytes) -> Any:
    return hmac.new(secret, SEAL_CONTEXT, hashlib.sha256)


@functools.lru_cache(maxsize=8)
def _keyed(secret: bytes) -> Any:
    return hmac.new(secret, digestmod=hashlib.sha256)


def seal(secret: bytes, event_hash_hex: str) -> str:
    """An event's seal: only a holder of the secret can make one for a given event hash. (The keyed
    state after the context is made once per secret and copied: every event of a verification and
    of a write is sealed or checked here.)"""
    mac = _sealing(secret).copy()
    mac.update(event_hash_hex.encode("utf-8"))
    return mac.hexdigest()


def commitment(secret: bytes, obj: dict[str, Any]) -> str:
    """A keyed commitment to raw evidence (RFC 8785 form), checkable while the evidence exists and
    not brute-forceable from the chain once it is erased."""
    mac = _keyed(secret).copy()
    mac.update(canonical_document(obj))
    return mac.hexdigest()
