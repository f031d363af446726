"""Response bodies of the proof routes (the OpenAPI document; responses are built from plain dicts)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

HEX_HASH = "lowercase hex SHA-256"


class Jwk(BaseModel):
    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str = Field(description="The public key, base64url")
    kid: str = Field(description="RFC 7638 thumbprint of the key")
    alg: Literal["EdDSA"]
    use: Literal["sig"]


class Jwks(BaseModel):
    keys: list[Jwk] = Field(description="The current signing key first, then retired ones (old tokens still verify)")


class Checkpoint(BaseModel):
    """A signed tree head of the tenant's Merkle log. Trust the `jws` (verified with the JWKS), not the
    copies of its payload beside it."""

    tenant: str
    tree_size: int = Field(description="How many log entries (events, in log order) the tree covers")
    root_hash: str = Field(description=f"RFC 9162 root of the first tree_size entries, {HEX_HASH}")
    issued_at: datetime
    key_id: str = Field(description="kid of the signing key in /.well-known/consent-ledger/jwks.json")
    jws: str = Field(description="Compact JWS (EdDSA, typ consent-ledger-checkpoint+jwt) over "
                                 "{tenant, tree_size, root_hash, issued_at}")


class CheckpointPage(BaseModel):
    items: list[Checkpoint] = Field(description="Oldest first")
    next_after: int | None = Field(description="Pass as `after` for the next page; null on the last page")


class InclusionProof(BaseModel):
    """Leaf hash = SHA-256(0x00 || bytes of event_hash); with audit_path it folds to the checkpoint's
    root (RFC 9162 section 2.1.3.2)."""

    tenant: str
    event_id: uuid.UUID
    leaf_index: int = Field(description="The event's place in the log, from 0")
    tree_size: int
    event_hash: str = Field(description=f"The event's hash (its document's), {HEX_HASH}: the leaf's data")
    leaf_hash: str = Field(description=HEX_HASH)
    audit_path: list[str] = Field(description=f"RFC 9162 inclusion proof, deepest sibling first, {HEX_HASH}")
    checkpoint: Checkpoint = Field(description="The signed checkpoint the proof is against")


class ConsistencyProof(BaseModel):
    """The tree of `second` entries extends the tree of `first` entries (RFC 9162 section 2.1.4.2)."""

    tenant: str
    first: int
    second: int
    proof: list[str] = Field(description=f"RFC 9162 consistency proof, {HEX_HASH}; empty when first = second")
    first_checkpoint: Checkpoint
    second_checkpoint: Checkpoint
