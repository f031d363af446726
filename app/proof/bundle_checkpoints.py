"""The checkpoints of a bundle: reading checkpoints.json, their signatures, the trusted checkpoint.

Part of app.proof.verify_bundle (see its docstring; docs/proof.md)."""
from __future__ import annotations

from typing import Any

import orjson

from app.proof.bundle_format import (
    _CACHE_MAX,
    CHECKPOINTS,
    CHUNK,
    LINE_MAX,
    SIGNATURE_BATCH,
    WHOLE_JSON_MAX,
)
from app.proof.bundle_keys import (
    _check_token,
    _header_kid,
    _payload_ok,
    _unverified_payload,
)
from app.proof.bundle_result import _short
from app.proof.bundle_zip import _blocks, _json, _Member, _parses


class _Checkpoints:
    """The checkpoint part of _Verification (bundle_members.py), which provides `read`, `result`,
    `keyset` and the rest of the state these use."""

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

