"""An audit bundle: everything needed to recompute a tenant's ledger offline (issue 8 point 4;
docs/proof.md; checked by app/proof/verify_bundle.py, or by anyone from docs/proof-test-vectors.md).

One ZIP (deflate):

- `events.ndjson`: one line per leaf of the tenant's Merkle log, in log index order:
  `{"log_index": i, "event": <the printed event, with "hash">}`, and for chain version 1 rows also
  `"legacy": <the exact payload their v1 hash covers>`;
- `notices.json`, `disclosures.json`: every notice version and every purpose disclosure the events cite;
- `checkpoints.json`: every signed checkpoint of the tenant, ascending tree size (the last one, made
  just before the snapshot, covers every event in the bundle);
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
from typing import Any

import asyncpg
import orjson

from app.consents import chain, queries
from app.duties import records as duty_records
from app.proof import log as proof_log
from app.proof.context import Proof
from app.proof.verify_bundle import (CHECKPOINTS, DISCLOSURES, EVENTS, FORMAT, JWKS, MANIFEST, NOTICES, README)

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


README_TEXT = """\
# consent-ledger audit bundle / 동의 원장 감사 번들

Tenant / 테넌트: `{tenant}` · events / 이벤트: {events} · tree size / 트리 크기: {tree_size} ·
created / 생성: {created_at}

## 한국어

이 파일은 한 테넌트의 동의 원장 전체를, 서비스나 데이터베이스 없이 누구나 다시 계산해 검증할 수 있도록
묶은 것입니다.

- `events.ndjson`: Merkle 로그의 순서대로 한 줄에 한 이벤트. `event`는 API가 보여 주는 이벤트 그대로이며,
  `hash` = SHA-256(RFC 8785로 정규화한 `event`에서 `hash`를 뺀 것). 체인 버전 1 이벤트는 그 해시가 덮는
  원래 페이로드(`legacy`)를 함께 싣습니다.
- `notices.json`: 이벤트가 인용한 고지문(개인정보 처리방침 등) 전문. `sha256` = SHA-256(본문 UTF-8).
- `disclosures.json`: 이벤트가 인용한 항목별 고지 내용. `hash` = SHA-256(RFC 8785(content)).
- `checkpoints.json`: 서명된 체크포인트(Ed25519, compact JWS). 각 체크포인트의 `root_hash`는 처음
  `tree_size`개 이벤트의 Merkle 루트(RFC 9162)입니다. `jwks.json`: 서비스의 공개 키.
- `manifest.json`: 각 파일의 SHA-256과 크기.
- IP 주소·사용자 에이전트 같은 원본 증거는 들어 있지 않습니다(버전 2 이벤트는 키가 있는 커밋먼트만
  가집니다).{v1_ko}

검증:

    consent-ledger verify-bundle {filename} [--public-key 공개키.pem|jwks.json] [--trusted-checkpoint 체크포인트.json]

번들 안의 `jwks.json`은 번들을 만든 쪽이 준 것이므로, 감사인은 서비스가 따로 공개한 키를
`--public-key`로 주는 것이 좋습니다(키를 바꾼 적이 있으면 쓰인 키 모두). 예전에 받아 둔 체크포인트
(CHECKPOINT_DIR의 파일이나 `ledger.checkpoint` 웹훅 본문)를 `--trusted-checkpoint`로 주면, 그 뒤에 과거
기록이 고쳐졌는지(서비스의 키로 다시 서명했더라도) 드러나고, `--public-key`가 없으면 모든 체크포인트가
그 체크포인트에 서명한 키로 서명되어 있어야 합니다. 둘 다 없으면 번들 자신의 키를 믿었다는 경고가
출력됩니다. 종료 코드: 0 유효, 1 깨진 곳 있음(종류·위치·설명 출력), 2 읽을 수 없는 입력(검증기의 크기
제한을 넘는 번들 포함).

직접 검증기를 만들려면 consent-ledger 저장소의 `docs/proof-test-vectors.md`(정규화 규칙, 바이트 단위
정의, 시험 벡터)를 보십시오.

## English

This file holds one tenant's whole consent ledger, so that anyone can recompute and check it without
the service or its database.

- `events.ndjson`: one event per line, in Merkle log order. `event` is the event exactly as the API
  prints it; `hash` = SHA-256 of the RFC 8785 form of `event` minus `hash`. Chain version 1 events also
  carry the original payload their hash covers (`legacy`).
- `notices.json`: the full text of every notice the events cite; `sha256` = SHA-256(UTF-8 body).
- `disclosures.json`: every purpose disclosure the events cite; `hash` = SHA-256(RFC 8785(content)).
- `checkpoints.json`: signed checkpoints (Ed25519, compact JWS); each `root_hash` is the RFC 9162
  Merkle root of the first `tree_size` events. `jwks.json`: the service's public keys.
- `manifest.json`: the SHA-256 and size of every file.
- No raw evidence (IP address, user agent): version 2 events carry only a keyed commitment to it.{v1_en}

To verify:

    consent-ledger verify-bundle {filename} [--public-key KEY.pem|jwks.json] [--trusted-checkpoint CHECKPOINT.json]

The bundle's own `jwks.json` comes from whoever made the bundle: an auditor should give the key the
service published elsewhere with `--public-key` (every key it used, if it changed keys). A checkpoint
saved earlier (a file from CHECKPOINT_DIR or a `ledger.checkpoint` webhook body) given with
`--trusted-checkpoint` shows whether history it covered was rewritten since, even if re-signed with the
service's own key; without `--public-key`, every checkpoint must then be signed by the key that signed
the saved one. With neither, verify-bundle warns that it trusted the bundle's own keys. Exit status:
0 valid, 1 breaks found (kind, where, detail printed), 2 unreadable input (a bundle past the verifier's
size limits included).

To write your own verifier, see `docs/proof-test-vectors.md` in the consent-ledger repository
(canonical form, byte-by-byte definitions, test vectors).
"""


# Chain version 1 events (docs/proof-test-vectors.md section 8), said where they are in a bundle.
V1_KO = """
  단, 체인 버전 1 이벤트 {v1}건은 해시가 원본을 덮으므로 `legacy`에 IP·사용자 에이전트가 들어 있습니다.
  이 이벤트들의 해시는 `legacy` 페이로드만 덮습니다. 출력된 이벤트 가운데 회원 ID(`subject_id`),
  `purpose`, `collection_point`, 고지문(`notice`)의 `key`·`version`·`sha256`·`superseded_at`,
  `evidence`는 해시가 덮지 않는 값입니다(페이로드에는 그 대신 내부 ID가 있습니다). 나머지 값은
  페이로드와 값과 형식까지 같아야 하고, 버전 1 이벤트는 모든 버전 2 이벤트보다 앞에만 올 수 있습니다."""
V1_EN = """
  Except: the {v1} chain version 1 events carry their IP address and user agent in `legacy`, because
  their hash covers them. Their hash covers that payload, not the printed event: of these events, the
  member id (`subject_id`), `purpose`, `collection_point`, the notice's `key`, `version`, `sha256` and
  `superseded_at`, and `evidence` are not covered by their hash (the payload holds internal ids
  instead). Every other printed member must agree with the payload, value and type, and version 1
  events may only come before every version 2 event."""


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
        self.write((b",\n" if self.count else b"\n") + orjson.dumps(item))
        self.count += 1

    def close(self) -> dict[str, Any]:
        self.write(b"\n]\n")
        return super().close()


class BundleWriter:
    """The ZIP itself, with no database: events.ndjson is streamed through `events` and
    checkpoints.json through `checkpoints` (each hashed as it goes), then `finish` writes the other
    members and the manifest. bench/proof.py builds synthetic bundles with it."""

    def __init__(self, path: Path, tenant: str) -> None:
        self.tenant = tenant
        self.zf = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=COMPRESSLEVEL)
        self.events = _Member(self.zf, EVENTS)
        self.checkpoints: _Array | None = None
        self.files: list[dict[str, Any]] = []

    def start_checkpoints(self) -> _Array:
        """Close events.ndjson and open checkpoints.json (ascending tree size; `add` each)."""
        self.files.append(self.events.close())
        self.checkpoints = _Array(self.zf, CHECKPOINTS)
        return self.checkpoints

    def finish(self, *, tree_size: int, root_hash: str | None, counts: dict[str, int], notices: list[dict[str, Any]],
               disclosures: list[dict[str, Any]], jwks: dict[str, Any], filename: str,
               created_at: str | None = None) -> dict[str, Any]:
        created_at = created_at or chain.format_time(datetime.now(UTC))
        checkpoints = self.checkpoints or self.start_checkpoints()
        self.files.append(checkpoints.close())
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
                       "checkpoints": checkpoints.count},
            "files": self.files,
        }
        self.zf.writestr(MANIFEST, _json(manifest))
        self.zf.close()
        return manifest

    def abort(self) -> None:
        try:
            self.zf.close()
        except Exception:  # noqa: BLE001 - the file is deleted anyway
            pass


async def _write_events(conn: asyncpg.Connection, member: _Member, tenant: str, tree_size: int,
                        ) -> tuple[dict[str, int], set, dict[tuple[str, str], Any]]:
    """Stream the events into events.ndjson; compression runs in a thread while the next rows arrive."""
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


def _write(zf: Any, name: str, data: bytes) -> dict[str, Any]:
    member = _Member(zf, name)
    member.write(data)
    return member.close()


async def write_bundle(pool_or_conn: asyncpg.Pool | asyncpg.Connection, tenant: str, proof: Proof, out: Path, *,
                       checkpoint_dir: Path | None = None) -> dict[str, Any]:
    """Write the tenant's audit bundle to `out` (atomically: a temporary file renamed into place) and
    return its manifest. First a fresh checkpoint in a transaction of its own (log.make_checkpoint,
    forced: it also re-checks that the log extends the last checkpoint and the newest file in
    `checkpoint_dir`, and refuses with LogInconsistent otherwise), so every event is covered; then
    everything else from one repeatable-read snapshot."""
    await proof_log.make_checkpoint(pool_or_conn, tenant, proof, force=True, checkpoint_dir=checkpoint_dir)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    if isinstance(pool_or_conn, asyncpg.Pool):
        async with pool_or_conn.acquire() as conn:
            manifest = await _snapshot(conn, tenant, proof, tmp, out.name)
    else:
        manifest = await _snapshot(pool_or_conn, tenant, proof, tmp, out.name)
    os.replace(tmp, out)
    return manifest


async def _snapshot(conn: asyncpg.Connection, tenant: str, proof: Proof, tmp: Path, filename: str) -> dict[str, Any]:
    writer = BundleWriter(tmp, tenant)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            if await conn.fetchval("SELECT 1 FROM tenants WHERE id = $1", tenant) is None:
                raise LookupError(f"no tenant {tenant!r}")
            last = await conn.fetchrow(LATEST_SQL, tenant)
            tree_size = last["tree_size"] if last else 0
            counts, notice_ids, cited = await _write_events(conn, writer.events, tenant, tree_size)
            checkpoints = writer.start_checkpoints()
            async for row in conn.cursor(CHECKPOINTS_SQL, tenant, tree_size, prefetch=PREFETCH):
                checkpoints.add(_checkpoint(row))
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
        tmp.unlink(missing_ok=True)
        raise
