"""An audit bundle: everything needed to recompute a tenant's ledger offline (issue 8 point 4;
docs/proof.md; checked by app/proof/verify_bundle.py, or by anyone from docs/proof-test-vectors.md).

One ZIP (deflate):

- `events.ndjson`: one line per leaf of the tenant's Merkle log, in log index order:
  `{"log_index": i, "event": <the printed event, with "hash">}`, and for chain version 1 rows also
  `"legacy": <the exact payload their v1 hash covers>`;
- `notices.json`, `disclosures.json`: every notice version and every purpose disclosure the events cite;
- `checkpoints.json`: every signed checkpoint of the tenant, ascending tree size (the last one, made
  just before the snapshot, covers every event in the bundle);
- `catalog.json`: the catalog's history (alembic 0009): every change to purposes, collection points,
  notices, recipients, processors, webhook endpoints and settings, before and after, who, when; the
  form any event was recorded on can be rebuilt from it (app/catalog/history.py does so);
- `jwks.json`: the service's public keys; `README.md`: how to verify (Korean and English);
- `manifest.json`: format, tenant, counts, and the SHA-256 and size of every other member.

Raw evidence (IP address, user agent, guardian documents) of chain version 2 is not in a bundle: the
events carry only its keyed commitment. Chain version 1 events are the exception docs/proof.md
allows: their hash covers the raw values, so their `legacy` payload carries them (`chain_v1_events`
in the manifest counts them; there are none in a ledger created after chain version 2).

Everything but the checkpoint is read in ONE repeatable-read, read-only transaction, the events
through a server-side cursor, written as they arrive: memory does not grow with the ledger.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson

from app.consents import chain, queries
from app.duties import records as duty_records
from app.proof import log as proof_log
from app.proof.bundle_readme import README_TEXT, V1_EN, V1_KO
from app.proof.context import Proof
from app.proof.verify_bundle import (CATALOG, CHECKPOINTS, DISCLOSURES, EVENTS, FORMAT, JWKS, MANIFEST, NOTICES,
                                     README)

PREFETCH = 5000  # rows per cursor round trip
FLUSH = 1 << 20  # bytes of event lines handed to the compressor at once
COMPRESSLEVEL = 3  # ~2x the speed of 6 on event lines for ~12 % more bytes

LATEST_SQL = (f"SELECT {proof_log.COLUMNS} FROM ledger_checkpoints WHERE tenant_id = $1"
              " ORDER BY tree_size DESC LIMIT 1")
CHECKPOINTS_SQL = (f"SELECT {proof_log.COLUMNS} FROM ledger_checkpoints WHERE tenant_id = $1 AND tree_size <= $2"
                   " ORDER BY tree_size")
# The leaves of the tree the last checkpoint signed, with their events and the member ids the
# documents print. An event row gone (a rogue DBA) leaves a gap in log_index, which the verifier names.
# A leaf is an event or a duty record (docs/duties.md): a duty record comes as one JSONB column.
EVENTS_SQL = """
SELECT l.idx AS log_index, s.tenant_id AS subject_tenant, s.external_id AS subject_ref, e.*,
       CASE WHEN e.id IS NULL THEN (SELECT to_jsonb(d) FROM duty_records d WHERE d.id = l.event_id) END AS duty
FROM ledger_log l
LEFT JOIN consent_events e ON e.id = l.event_id
JOIN subjects s ON s.id = l.subject_id
WHERE l.tenant_id = $1 AND l.idx < $2 AND (e.id IS NOT NULL OR EXISTS (SELECT 1 FROM duty_records d
                                                                      WHERE d.id = l.event_id))
ORDER BY l.idx
"""
NOTICES_SQL = """
SELECT id, key, version, title, language, body, sha256, effective_at, published_at
FROM notices WHERE id = ANY($1::uuid[]) ORDER BY key, version, id
"""
# The catalog's history (alembic 0009) as it stood in the snapshot: what every form showed, when.
CATALOG_SQL = """
SELECT json_build_object('id', id, 'entity', entity, 'entity_id', entity_id, 'key', key, 'op', op,
                         'before', before, 'after', after, 'changed_by', changed_by, 'db_role', db_role,
                         'changed_at', to_char(changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text
FROM catalog_changes WHERE tenant_id = $1 ORDER BY changed_at, id
"""
DISCLOSURES_SQL = """
SELECT d.purpose_id, d.hash, d.content::text AS content
FROM purpose_disclosures d
JOIN unnest($1::uuid[], $2::text[]) AS w(purpose_id, hash) ON d.purpose_id = w.purpose_id AND d.hash = w.hash
"""


def duty_line(row: Any) -> bytes:
    """The line of a duty record (docs/duties.md): `duty_record` is its document as printed."""
    stored = row["duty"]
    stored = orjson.loads(stored) if isinstance(stored, str) else dict(stored)
    for name in ("notify_at", "due_at", "recorded_at"):
        stored[name] = datetime.fromisoformat(stored[name])
    doc = duty_records.document(stored, tenant=row["subject_tenant"], subject_ref=row["subject_ref"])
    doc["hash"] = stored["hash"]
    return orjson.dumps({"log_index": row["log_index"], "duty_record": doc})


def event_line(row: Any) -> bytes:
    """One line of events.ndjson (without its newline) from an EVENTS_SQL row."""
    if row["duty"] is not None:
        return duty_line(row)
    line = {"log_index": row["log_index"],
            "event": queries.event_json(row, tenant=row["subject_tenant"], subject_ref=row["subject_ref"])}
    if row["chain_version"] == 1:
        line["legacy"] = chain.legacy_payload(row)
    return orjson.dumps(line)


def _checkpoint(row: Any) -> dict[str, Any]:
    return {"tenant": row["tenant_id"], "tree_size": row["tree_size"], "root_hash": row["root_hash"],
            "issued_at": chain.format_time(row["issued_at"]), "key_id": row["key_id"], "jws": row["jws"]}


def _json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"


class _Member:
    """A ZIP member written through this, hashed as it goes."""

    def __init__(self, zf: Any, name: str) -> None:
        self.name = name
        self.file = zf.open(name, "w", force_zip64=True)
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        self.size += len(data)
        self.file.write(data)

    def close(self) -> dict[str, Any]:
        self.file.close()
        return {"name": self.name, "sha256": self.digest.hexdigest(), "size": self.size}


class _Array(_Member):
    """A JSON array written one element per line (`[`, then `{...},` lines, the last without its
    comma, then `]`): valid JSON, and a reader can take it line by line (checkpoints.json may hold
    hundreds of thousands of checkpoints)."""

    def __init__(self, zf: Any, name: str) -> None:
        super().__init__(zf, name)
        self.count = 0
        self.write(b"[")

    def add(self, item: Any) -> None:
        self.add_json(orjson.dumps(item))

    def add_json(self, item: bytes) -> None:
        self.write((b",\n" if self.count else b"\n") + item)
        self.count += 1

    def close(self) -> dict[str, Any]:
        self.write(b"\n]\n")
        return super().close()


class BundleWriter:
    """The ZIP itself, with no database: events.ndjson is streamed through `events` and
    checkpoints.json through `checkpoints` (each hashed as it goes), then `finish` writes the other
    members and the manifest. bench/proof.py builds synthetic bundles with it.

    `out`: a path, or a file object (an unseekable one too: the ZIP then carries data descriptors).
    `drain`: awaited between batches, so that the reader of a stream sets the pace (app/audit/bundle_route.py)."""

    def __init__(self, out: Path | Any, tenant: str, drain: Callable[[], Awaitable[None]] | None = None) -> None:
        self.tenant = tenant
        self.zf = zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=COMPRESSLEVEL)
        self.events = _Member(self.zf, EVENTS)
        self.checkpoints: _Array | None = None
        self.catalog: _Array | None = None
        self.files: list[dict[str, Any]] = []
        self.drain = drain or _nothing

    def start_checkpoints(self) -> _Array:
        """Close events.ndjson and open checkpoints.json (ascending tree size; `add` each)."""
        self.files.append(self.events.close())
        self.checkpoints = _Array(self.zf, CHECKPOINTS)
        return self.checkpoints

    def start_catalog(self) -> _Array:
        """Close checkpoints.json and open catalog.json (the catalog's history; `add_json` each change)."""
        self.files.append((self.checkpoints or self.start_checkpoints()).close())
        self.catalog = _Array(self.zf, CATALOG)
        return self.catalog

    def finish(self, *, tree_size: int, root_hash: str | None, counts: dict[str, int], notices: list[dict[str, Any]],
               disclosures: list[dict[str, Any]], jwks: dict[str, Any], filename: str,
               created_at: str | None = None) -> dict[str, Any]:
        created_at = created_at or chain.format_time(datetime.now(UTC))
        checkpoints = self.checkpoints or self.start_checkpoints()
        self.files.append(self.catalog.close() if self.catalog else checkpoints.close())
        for name, value in ((NOTICES, notices), (DISCLOSURES, disclosures), (JWKS, jwks)):
            self.files.append(_write(self.zf, name, _json(value)))
        v1 = counts.get("chain_v1_events", 0)
        self.files.append(_write(self.zf, README, README_TEXT.format(
            tenant=self.tenant, events=counts["events"], tree_size=tree_size, created_at=created_at,
            filename=filename,
            v1_ko=V1_KO.format(v1=v1) if v1 else "", v1_en=V1_EN.format(v1=v1) if v1 else "").encode("utf-8")))
        manifest = {
            "format": FORMAT, "tenant": self.tenant, "created_at": created_at, "tree_size": tree_size,
            "root_hash": root_hash,
            "counts": {**counts, "notices": len(notices), "disclosures": len(disclosures),
                       "checkpoints": checkpoints.count,
                       **({"catalog_changes": self.catalog.count} if self.catalog else {})},
            "files": self.files,
        }
        self.zf.writestr(MANIFEST, _json(manifest))
        self.zf.close()
        return manifest

    def abort(self) -> None:
        """Give up: the member being written is closed first (else the ZIP cannot be closed, and says
        so when collected); no manifest is ever written, so what was written never verifies."""
        for member in (self.catalog, self.checkpoints, self.events):
            if member is not None and not member.file.closed:
                try:
                    member.file.close()
                except Exception:  # noqa: BLE001 - the file is deleted, or the stream cut, anyway
                    pass
                break
        try:
            self.zf.close()
        except Exception:  # noqa: BLE001 - as above
            pass


async def _write_events(conn: asyncpg.Connection, writer: BundleWriter, tenant: str, tree_size: int,
                        ) -> tuple[dict[str, int], set, dict[tuple[str, str], Any]]:
    """Stream the events into events.ndjson; compression runs in a thread while the next rows arrive."""
    member = writer.events
    counts = {"events": 0, "duty_records": 0, "chain_v1_events": 0}
    notice_ids: set = set()
    disclosures: dict[tuple[str, str], Any] = {}  # (purpose key, hash) -> purpose id
    pending: asyncio.Future | None = None
    lines: list[bytes] = []
    buffered = 0
    try:
        async for row in conn.cursor(EVENTS_SQL, tenant, tree_size, prefetch=PREFETCH):
            line = event_line(row)
            lines.append(line)
            buffered += len(line) + 1
            if row["duty"] is not None:
                counts["duty_records"] += 1
            else:
                counts["events"] += 1
            if row["chain_version"] == 1:
                counts["chain_v1_events"] += 1
            if row["notice_id"] is not None:
                notice_ids.add(row["notice_id"])
            if row["disclosure_hash"] is not None:
                disclosures.setdefault((row["purpose_key"], row["disclosure_hash"]), row["purpose_id"])
            if buffered >= FLUSH:
                if pending is not None:
                    await pending
                await writer.drain()
                pending = asyncio.ensure_future(asyncio.to_thread(member.write, b"\n".join(lines) + b"\n"))
                lines, buffered = [], 0
        if pending is not None:
            await pending
            pending = None
        if lines:
            member.write(b"\n".join(lines) + b"\n")
    finally:
        if pending is not None:
            await asyncio.gather(pending, return_exceptions=True)
    return counts, notice_ids, disclosures


async def _nothing() -> None:
    return None


def _write(zf: Any, name: str, data: bytes) -> dict[str, Any]:
    member = _Member(zf, name)
    member.write(data)
    return member.close()


async def write_bundle(pool_or_conn: asyncpg.Pool | asyncpg.Connection, tenant: str, proof: Proof, out: Path, *,
                       checkpoint_dir: Path | None = None,
                       reader: asyncpg.Pool | asyncpg.Connection | None = None) -> dict[str, Any]:
    """Write the tenant's audit bundle to `out` (atomically: a temporary file renamed into place) and
    return its manifest. First a fresh checkpoint in a transaction of its own (log.make_checkpoint,
    forced: it also re-checks that the log extends the last checkpoint and the newest file in
    `checkpoint_dir`, and refuses with LogInconsistent otherwise), so every event is covered; then
    everything else from one repeatable-read snapshot, on `reader` (a read replica) when given: a
    replica that has not yet received that checkpoint gives the bundle of the one before, whole."""
    await proof_log.make_checkpoint(pool_or_conn, tenant, proof, force=True, checkpoint_dir=checkpoint_dir)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer = BundleWriter(tmp, tenant)
    try:
        manifest = await snapshot(reader or pool_or_conn, writer, proof, out.name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return manifest


async def snapshot(source: asyncpg.Pool | asyncpg.Connection, writer: BundleWriter, proof: Proof,
                   filename: str) -> dict[str, Any]:
    """Everything but the checkpoint, from one snapshot of `source`, into `writer`; its manifest."""
    if isinstance(source, asyncpg.Pool):
        async with source.acquire() as conn:
            return await _snapshot(conn, writer, proof, filename)
    return await _snapshot(source, writer, proof, filename)


async def _snapshot(conn: asyncpg.Connection, writer: BundleWriter, proof: Proof, filename: str) -> dict[str, Any]:
    tenant = writer.tenant
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            if await conn.fetchval("SELECT 1 FROM tenants WHERE id = $1", tenant) is None:
                raise LookupError(f"no tenant {tenant!r}")
            last = await conn.fetchrow(LATEST_SQL, tenant)
            tree_size = last["tree_size"] if last else 0
            counts, notice_ids, cited = await _write_events(conn, writer, tenant, tree_size)
            checkpoints = writer.start_checkpoints()
            async for row in conn.cursor(CHECKPOINTS_SQL, tenant, tree_size, prefetch=PREFETCH):
                checkpoints.add(_checkpoint(row))
                if checkpoints.count % PREFETCH == 0:
                    await writer.drain()
            catalog = writer.start_catalog()
            async for row in conn.cursor(CATALOG_SQL, tenant, prefetch=PREFETCH):
                catalog.add_json(row[0].encode())
                if catalog.count % PREFETCH == 0:
                    await writer.drain()
            notices = await conn.fetch(NOTICES_SQL, list(notice_ids))
            wanted = sorted(cited)
            found = {(r["purpose_id"], r["hash"]): r["content"] for r in await conn.fetch(
                DISCLOSURES_SQL, [cited[k] for k in wanted], [k[1] for k in wanted])}
        return writer.finish(
            tree_size=tree_size, root_hash=last["root_hash"] if last else None, counts=counts, jwks=proof.jwks(),
            filename=filename,
            notices=[{"id": str(n["id"]), "key": n["key"], "version": n["version"], "title": n["title"],
                      "language": n["language"], "body": n["body"], "sha256": n["sha256"],
                      "effective_at": chain.format_time(n["effective_at"]),
                      "published_at": chain.format_time(n["published_at"])} for n in notices],
            disclosures=[{"purpose": purpose, "hash": h, "content": orjson.loads(found[cited[purpose, h], h])}
                         for purpose, h in wanted if (cited[purpose, h], h) in found])
    except BaseException:
        writer.abort()
        raise
