"""Verify an audit bundle offline: anyone can recompute (issue 8 point 4; docs/proof.md,
docs/proof-test-vectors.md).

Nothing here needs a database or the service's secrets: the standard library, orjson/rfc8785 (through
app.core.hashing), the Merkle tree (app.proof.merkle), JWS verification (app.proof.keys) and the
chain's pure functions (app.consents.chain).

What is checked, and the break kinds reported (`Break.kind`):

- the ZIP against its manifest: every member listed, present once, with its SHA-256 and size
  (`missing_member`, `unlisted_member`, `duplicate_member`, `member_hash`, `manifest`);
- every event's hash: SHA-256 of the RFC 8785 form of the printed event minus `hash` (chain version 2),
  or the v1 hash of its `legacy` payload, which has exactly the v1 members and agrees, value and JSON
  type, with every printed member it also determines (`event_hash`, `legacy_mismatch`,
  `malformed_event`, `malformed_line`, `foreign_tenant`);
- chain version 1 events only as the tenant's oldest history, since nothing but their hash (which
  anyone can compute) vouches for them: none after a version 2 leaf in the log (`legacy_after_v2`),
  none after a version 2 event in its subject's chain (`chain_legacy_after_v2`);
- every subject's chain, grouped by (tenant, subject_id): seq 1..n without a gap, each prev_hash the
  previous event's hash, recorded_at never earlier (`chain_seq`, `broken_link`, `time_reversed`);
- notices (SHA-256 of the body) and disclosures (SHA-256 of RFC 8785 of the content), and that every
  event cites one in the bundle (`notice_body`, `notice_missing`, `notice_mismatch`,
  `disclosure_content`, `disclosure_missing`);
- the entries of every JSON member, their shape included (`malformed_member`, `manifest`);
- the Merkle log: log indexes 0..n-1 in order (`log_order`); every checkpoint's signature, with ONLY
  the auditor's own keys (--public-key), else with ONLY the key that verified the auditor's trusted
  checkpoint (any other key: `untrusted_key`), else, with a warning, the bundle's own jwks.json
  (`checkpoint_signature`, `checkpoint_fields`, `checkpoint_tenant`, `checkpoint_order`); the root of
  the first tree_size leaves at EVERY checkpoint
  (`checkpoint_root`, `checkpoint_beyond_events`), which proves every event's inclusion and the
  consistency of all bundled checkpoints; the last checkpoint covers every event (`uncovered_events`);
- optionally a checkpoint the auditor saved earlier: its signature, tenant, and the root of the
  bundle's first tree_size leaves (`trusted_signature`, `trusted_tenant`, `trusted_root`,
  `trusted_beyond_events`): a history rewritten since, even re-signed with the service's own key,
  fails here.

Unreadable (exit 2), never a break: a bundle that is not a ZIP or has no manifest, and one past the
limits below (LIMITS, RATIO, LINE_MAX, MIN_LINE, JSON_DENSITY), which keep a small hostile ZIP from
costing much more time or memory than a real bundle of its size.

Speed: one pass over events.ndjson (inflated and hashed by a reader thread), cut into blocks of whole
lines; each block is checked on its own (in worker processes for a large bundle: `jobs`) and gives its
leaves as complete aligned subtrees and its subjects' first and last events, which are stitched here
in file order, so the roots at every checkpoint size come out of one running stack and the whole pass
is O(n). A line is checked on a fast path when its event has exactly the members and types of a chain
version 2 document (orjson's sorted output is then its RFC 8785 form); anything else goes through
app.core.hashing.canonical_json and is named. Checkpoint signatures are checked in batches beside
the events. Memory: one block per worker in flight, plus the last event of every subject.
"""

from __future__ import annotations

import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

from app.proof.bundle_events import (  # noqa: F401 (re-exported)
    _CHAIN_LEGACY_AFTER_V2,
    _LEGACY_AFTER_V2,
    LEGACY_KEYS,
    Block,
    Checker,
    _hashable,
    _legacy_disagrees,
    _legacy_instant,
    _parts_ok,
    _shape_ok,
    _subtrees,
)
from app.proof.bundle_format import (  # noqa: F401 (re-exported)
    _ACTOR,
    _CACHE_MAX,
    _FIELDS,
    _HEX64,
    _MAX_SAFE,
    _NOTICE,
    _NULLABLE,
    _SIGNATURES,
    _STR,
    _TIME,
    _TIMES,
    _TYPE,
    BLOCK,
    CHECKPOINT_TYP,
    CATALOG,
    CHECKPOINTS,
    CHUNK,
    DISCLOSURES,
    EVENT_KEYS,
    EVENTS,
    FORMAT,
    JSON_DENSITY,
    JSON_SLACK,
    JWKS,
    LEGACY_LINE_KEYS,
    LIMITS,
    LINE_KEYS,
    LINE_MAX,
    LINE_SLACK,
    MANIFEST,
    MAX_JOBS,
    MAX_LISTED,
    MEMBERS,
    MIN_LINE,
    NOTICES,
    PARALLEL_FROM,
    RATIO,
    RATIO_SLACK,
    README,
    SIGNATURE_BATCH,
    WHOLE_JSON_MAX,
    _actor,
    _evidence,
    _fields,
    _notice,
    _signatures,
)
from app.proof.bundle_keys import (  # noqa: F401 (re-exported)
    _check_token,
    _header_kid,
    _Later,
    _no_repeats,
    _payload_ok,
    _public_jwk,
    _signature_failures,
    _strict_b64u,
    _unverified_payload,
    load_public_keys,
    load_trusted_checkpoint,
)
from app.proof.bundle_members import _Verification
from app.proof.bundle_result import Break, Result, Unreadable, _cut, _short  # noqa: F401 (re-exported)
from app.proof.bundle_workers import (  # noqa: F401 (re-exported)
    _ahead,
    _init_worker,
    _jobs,
    _Log,
    _run,
    _work,
    _worker,
)
from app.proof.bundle_zip import (  # noqa: F401 (re-exported)
    _blocks,
    _budget,
    _check_lines,
    _check_sizes,
    _json,
    _Member,
    _parses,
    _too_big,
)


def verify(path: Path, public_key: Path | None = None, trusted_checkpoint: Path | None = None, *,
           jobs: int | None = None) -> Result:
    """Check a bundle; every break is in the result (valid = none). Unreadable when the bundle, the key
    or the trusted checkpoint cannot be read at all. `jobs`: worker processes for the events (default:
    one per CPU for a large bundle, none for a small one)."""
    started = time.perf_counter()
    result = Result(path=str(path))
    own_keys = load_public_keys(public_key) if public_key is not None else None
    trusted_jws = load_trusted_checkpoint(trusted_checkpoint) if trusted_checkpoint is not None else None
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise Unreadable(f"{path}: not a readable ZIP file ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        with zf:
            run = _Verification(zf, result, own_keys, trusted_jws)
            manifest = run.manifest()
            bundle_keys = run.jwks()
            run.read(README)
            # Which keys the checkpoints are verified with: the auditor's own (--public-key), else the
            # one that verified the checkpoint the auditor saved (--trusted-checkpoint), an anchor no
            # key added to jwks.json can replace; only with neither, the bundle's own jwks.json.
            keyset = own_keys if own_keys is not None else bundle_keys
            trusted = run.trusted(keyset)
            if own_keys is not None:
                result.keys_from = f"--public-key {public_key}"
                run.anchor = None  # every key listed there is the auditor's own: no other anchor
            elif run.anchor is not None:
                keyset = {"keys": [k for k in bundle_keys["keys"] if k.get("kid") == run.anchor]}
                result.keys_from = f"the key that signed your trusted checkpoint ({run.anchor})"
            elif trusted_jws is None:
                result.warnings.append(
                    "the checkpoints were verified with the bundle's own jwks.json, which whoever made the bundle "
                    "chose: anyone able to change the bundle can add a key of his own to it and sign what he likes. "
                    "Give --public-key (the service's key, obtained elsewhere) or --trusted-checkpoint (a checkpoint "
                    "you saved earlier).")
            notices, disclosures = run.notices(), run.disclosures()
            run.catalog()
            checker = Checker(result.tenant or "", notices, disclosures)
            jobs = _jobs(zf, jobs)
            pool = None
            if jobs > 1:
                import multiprocessing

                # spawn: no fork of whatever threads the caller runs
                pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_init_worker, initargs=(checker,))
            try:
                if pool is None:
                    def submit(tokens: list[Any]) -> Any:
                        return _Later(tokens, keyset)
                else:
                    def submit(tokens: list[Any]) -> Any:
                        return pool.apply_async(_signature_failures, (tokens, keyset))
                checkpoints, batches = run.checkpoints(submit)
                targets = {size for _, size, _ in checkpoints}
                if trusted is not None:
                    targets.add(trusted["tree_size"])
                log = _Log(targets)
                counts = run.events(checker, log, pool, jobs, BLOCK)  # BLOCK read here: tests set verify_bundle.BLOCK
                signed = run.signatures(batches)
            finally:
                if pool is not None:
                    pool.terminate()
                    pool.join()
    except zipfile.BadZipFile as exc:
        raise Unreadable(f"{path}: the ZIP is damaged ({exc})") from None
    except (OSError, EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:
        # (NotImplementedError: a compression method zipfile lacks; RuntimeError: an encrypted member)
        raise Unreadable(f"{path}: cannot read ({exc})") from None

    n = log.size
    verified = 0
    for label, size, root in checkpoints:
        if size > n:
            result.add("checkpoint_beyond_events", f"signed for {size} events, but the bundle has only {n}: "
                                                   "leaves were removed", file=CHECKPOINTS, item=label)
        elif log.roots[size].hex() != root:
            result.add("checkpoint_root", f"the first {size} events give root {log.roots[size].hex()}; the checkpoint "
                                          f"signed {root}", file=CHECKPOINTS, item=label)
        elif label in signed:
            verified += 1
    last = checkpoints[-1][1] if checkpoints else 0
    if not checkpoints and n:
        result.add("uncovered_events", "the bundle has no readable checkpoint", file=CHECKPOINTS)
    elif n > last:
        result.add("uncovered_events", f"{n - last} events after the last checkpoint (tree_size {last}): no signature "
                                       "covers them", file=EVENTS, log_index=last)
    if checkpoints and manifest.get("root_hash") != checkpoints[-1][2]:
        result.add("manifest", f"the manifest says root_hash {manifest.get('root_hash')!r}; the last checkpoint signed "
                               f"{checkpoints[-1][2]}", file=MANIFEST)
    if isinstance(manifest.get("tree_size"), int) and manifest["tree_size"] != n:
        result.add("manifest", f"the manifest says tree_size {manifest['tree_size']}; events.ndjson has {n} events",
                   file=MANIFEST)
    if trusted is not None:
        size = trusted["tree_size"]
        if size > n:
            result.add("trusted_beyond_events", f"the trusted checkpoint covers {size} events; the bundle has only {n}: "
                                                "events it covered were removed", file="--trusted-checkpoint")
            result.trusted["consistent"] = False
        else:
            ok = log.roots[size].hex() == trusted["root_hash"]
            result.trusted["consistent"] = ok
            if not ok:
                result.add("trusted_root", f"the bundle's first {size} events give root {log.roots[size].hex()}; the "
                                           f"checkpoint you trusted says {trusted['root_hash']}: history it covered was "
                                           "rewritten", file="--trusted-checkpoint")
    result.counts = {**counts, "notices": len(notices), "disclosures": len(disclosures),
                     "checkpoints": run.checkpoint_count,
                     "checkpoints_verified": verified,
                     "leaves": n}
    result.seconds = time.perf_counter() - started
    return result
