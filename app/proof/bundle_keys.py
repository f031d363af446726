"""Keys and checkpoints: loading the auditor's key and trusted checkpoint, JWS checks of checkpoint signatures.

Part of app.proof.verify_bundle (see its docstring; docs/proof.md)."""
from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

import orjson

from app.proof import keys
from app.proof.bundle_format import _HEX64, CHECKPOINT_TYP
from app.proof.bundle_result import Unreadable

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


def _header_kid(segment: str) -> Any:
    """The kid of a JWS header segment (base64url JSON), None when there is none."""
    try:
        header = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error):
        return None
    return header.get("kid") if isinstance(header, dict) else None
