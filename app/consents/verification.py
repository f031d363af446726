"""Verify one subject against everything the database holds about it (issue: proof).

Read in one repeatable-read snapshot, so an append racing the check is either wholly seen or not
at all. Each check names the kind of break and where it is; a rogue DBA who edits any one table
(events, head, state, catalog texts, evidence, log) leaves at least one of these. What a rewrite
of *all* of them with recomputed hashes cannot fake: the seals (a key the database never holds)
and the signed checkpoints already handed out (app/proof).
"""

from __future__ import annotations

import hmac
import uuid
from typing import Any, Mapping

import asyncpg

from app.consents import chain
from app.core.errors import NotFound
from app.core.hashing import canonical_json, sha256_hex
from app.duties import verification as duty_checks
from app.proof import keys

MAX_BREAKS = 100

SUBJECT = """
SELECT id, tenant_id, external_id, last_seq, last_hash, last_recorded_at FROM subjects
WHERE tenant_id = $1 AND external_id = $2
"""
EVENTS = "SELECT * FROM consent_events WHERE subject_id = $1 ORDER BY seq, id"
STATES = "SELECT * FROM consent_states WHERE subject_id = $1"
# The catalog rows the events cite, the texts behind their hashes, and their places in the log.
CITED = """
SELECT 'purpose' AS what, p.id, p.key, p.tenant_id, NULL::text AS version, NULL::text AS sha256,
       NULL::text AS body, NULL::jsonb AS content
FROM purposes p WHERE p.id = ANY($1::uuid[])
UNION ALL
SELECT 'collection_point', cp.id, cp.key, cp.tenant_id, NULL, NULL, NULL, NULL
FROM collection_points cp WHERE cp.id = ANY($2::uuid[])
UNION ALL
SELECT 'notice', n.id, n.key, n.tenant_id, n.version, n.sha256, n.body, NULL
FROM notices n WHERE n.id = ANY($3::uuid[])
UNION ALL
SELECT 'disclosure', d.purpose_id, d.hash, d.tenant_id, NULL, NULL, NULL, d.content
FROM purpose_disclosures d WHERE d.purpose_id = ANY($1::uuid[])
"""
# Version 1 events are only ever the tenant's oldest history (the migration queued them first): the
# first version 2 leaf of the tenant's log bounds where any version 1 event may sit.
FIRST_V2_LEAF = """
SELECT l.idx FROM ledger_log l
WHERE l.tenant_id = $1
  AND EXISTS (SELECT 1 FROM consent_events e WHERE e.id = l.event_id AND e.chain_version = 2)
ORDER BY l.idx LIMIT 1
"""
EVIDENCE = "SELECT id, ip, user_agent, guardian, commitment, purged_at FROM consent_evidence WHERE subject_id = $1"
# Both ways: each event's place in the log, and each log entry (or queued one) of this subject.
LOG = """
SELECT event_id, idx, event_hash, false AS pending FROM ledger_log WHERE subject_id = $1
UNION ALL
SELECT event_id, NULL, event_hash, true FROM ledger_log_queue WHERE subject_id = $1
"""


class Report:
    def __init__(self) -> None:
        self.breaks: list[dict[str, Any]] = []

    def add(self, kind: str, detail: str, event: Mapping[str, Any] | None = None, seq: int | None = None) -> None:
        if len(self.breaks) < MAX_BREAKS:
            self.breaks.append({
                "kind": kind, "seq": event["seq"] if event is not None else seq,
                "event_id": event["id"] if event is not None else None,
                "purpose": event["purpose_key"] if event is not None else None, "detail": detail,
            })


def _chain(report: Report, subject: Mapping[str, Any], events: list[Mapping[str, Any]], secret: bytes,
           typed: bool) -> None:
    tenant, member = subject["tenant_id"], subject["external_id"]
    hash_of = chain.row_hash if typed and type(tenant) is str and type(member) is str else chain.stored_hash
    previous_hash, previous_time, expected, seen_v2 = None, None, 1, False
    for event in events:
        if event["chain_version"] == 1 and seen_v2:
            report.add("legacy_after_v2", "a version 1 event (no seal) after version 2 events: version 1 is only "
                                          "history from before the upgrade", event)
        seen_v2 = seen_v2 or event["chain_version"] != 1
        if event["seq"] > expected:
            report.add("missing_event", f"events {expected} to {event['seq'] - 1} are missing", seq=expected)
        elif event["seq"] < expected:
            report.add("extra_event", f"a second event with seq {event['seq']}", event)
            continue
        expected = event["seq"] + 1
        if event["tenant_id"] != tenant:
            report.add("altered_event", f"the row names tenant {event['tenant_id']!r}", event)
        try:
            recomputed = hash_of(event, tenant=tenant, subject_ref=member)
        except (TypeError, ValueError) as exc:  # e.g. a seq past 2^53: no RFC 8785 form, so no hash
            recomputed = None
            report.add("altered_event", f"the event's document has no canonical form ({str(exc)[:200]})", event)
        if recomputed is not None and recomputed != event["hash"]:
            report.add("altered_event", "the event's document (member id, tenant, content) does not hash to its "
                                        "stored hash", event)
        if event["prev_hash"] != previous_hash:
            report.add("broken_link", "prev_hash is not the previous event's hash", event)
        if event["chain_version"] != 1 and not (
                event["seal"] and hmac.compare_digest(event["seal"], keys.seal(secret, event["hash"]))):
            report.add("unsealed_event", "the seal is not the service's: this event was not written by it", event)
        if previous_time is not None and event["recorded_at"] < previous_time:
            report.add("time_reversed", "recorded before the previous event", event)
        previous_hash, previous_time = event["hash"], event["recorded_at"]
    last = events[-1] if events else None
    if subject["last_seq"] != (last["seq"] if last else 0) or subject["last_hash"] != (last["hash"] if last else None):
        report.add("head_mismatch", f"the subject's head says {subject['last_seq']} events ending in "
                                    f"{subject['last_hash']}; the stored chain ends elsewhere",
                   seq=subject["last_seq"])


def _state(report: Report, events: list[Mapping[str, Any]], states: list[Mapping[str, Any]]) -> None:
    folded: dict[uuid.UUID, Mapping[str, Any]] = {}
    for event in events:
        before = folded.get(event["purpose_id"])
        if event["version"] != (before["version"] + 1 if before else 1) or \
                event["previous_status"] != (before["status"] if before else None):
            report.add("broken_fold", "version or previous_status does not follow the purpose's previous event",
                       event)
        folded[event["purpose_id"]] = event
    for state in states:
        event = folded.pop(state["purpose_id"], None)
        if event is None:
            report.add("state_mismatch", f"a current state ({state['status']}) for a purpose with no event")
        elif (state["status"], state["version"], state["last_event_id"]) != \
                (event["status"], event["version"], event["id"]):
            report.add("state_mismatch", f"the current state says {state['status']} (version {state['version']}); "
                                         f"the events say {event['status']} (version {event['version']})", event)
    for event in folded.values():
        report.add("state_mismatch", "the purpose has events but no current state", event)


def _commitment(known: dict[uuid.UUID, str], raw: Mapping[str, Any], secret: bytes) -> str:
    if raw["id"] not in known:
        known[raw["id"]] = keys.commitment(secret, {"id": str(raw["id"]), "ip": raw["ip"],
                                                    "user_agent": raw["user_agent"], "guardian": raw["guardian"]})
    return known[raw["id"]]


class Cited:
    """The catalog rows the events cite (CITED), indexed, each text's hash computed once however
    many events cite it (a tenant-wide run shares one per batch of subjects)."""

    def __init__(self, rows: list[Mapping[str, Any]]) -> None:
        self.by = {(r["what"], r["id"]): r for r in rows if r["what"] != "disclosure"}
        self.disclosures = {(r["id"], r["key"]): r for r in rows if r["what"] == "disclosure"}
        self._notice_ok: dict[Any, bool] = {}
        self._disclosure_ok: dict[tuple[Any, str], bool] = {}
        self.judged: dict[tuple[Any, ...], list[tuple[str, str]]] = {}  # by _cited

    def notice_ok(self, notice: Mapping[str, Any]) -> bool:
        """The stored text hashes to the stored sha256."""
        if notice["id"] not in self._notice_ok:
            self._notice_ok[notice["id"]] = sha256_hex(notice["body"]) == notice["sha256"]
        return self._notice_ok[notice["id"]]

    def disclosure_ok(self, purpose_id: Any, disclosure_hash: str) -> bool:
        """A stored disclosure of the purpose hashes to `disclosure_hash`."""
        key = (purpose_id, disclosure_hash)
        if key not in self._disclosure_ok:
            row = self.disclosures.get(key)
            self._disclosure_ok[key] = row is not None and \
                sha256_hex(canonical_json(row["content"])) == disclosure_hash
        return self._disclosure_ok[key]


def _catalog_breaks(event: Mapping[str, Any], cited: Cited, tenant: str) -> list[tuple[str, str]]:
    """What is wrong with the catalog rows an event cites (purpose, collection point, notice text,
    disclosure text), as (kind, detail)."""
    out = []
    by = cited.by
    purpose = by.get(("purpose", event["purpose_id"]))
    if purpose is None or purpose["tenant_id"] != tenant or purpose["key"] != event["purpose_key"]:
        out.append(("catalog_mismatch", "the purpose row is not the one the event names"))
    if event["collection_point_id"] is not None:
        point = by.get(("collection_point", event["collection_point_id"]))
        if point is None or point["key"] != event["collection_point_key"]:
            out.append(("catalog_mismatch", "the collection point row is not the one the event names"))
    if event["notice_id"] is not None:
        notice = by.get(("notice", event["notice_id"]))
        if notice is None or (notice["key"], notice["version"]) != (event["notice_key"], event["notice_version"]) \
                or not cited.notice_ok(notice) or notice["sha256"] != event["notice_sha256"]:
            out.append(("notice_mismatch", "the stored notice text does not hash to the version the event was "
                                           "recorded on"))
    if event["disclosure_hash"] is not None and not cited.disclosure_ok(event["purpose_id"], event["disclosure_hash"]):
        out.append(("disclosure_mismatch", "no stored disclosure text hashes to the disclosure_hash shown"))
    return out


def _cited(report: Report, events: list[Mapping[str, Any]], cited: Cited,
           evidence: list[Mapping[str, Any]], secret: bytes, tenant: str) -> None:
    raw_by_id = {r["id"]: r for r in evidence}
    commitments: dict[uuid.UUID, str] = {}  # one visit's decisions share one evidence row
    judged = cited.judged
    for event in events:
        # most events of a batch cite the same few catalog rows: each combination is judged once
        cites = (tenant, event["purpose_id"], event["purpose_key"], event["collection_point_id"],
                 event["collection_point_key"], event["notice_id"], event["notice_key"], event["notice_version"],
                 event["notice_sha256"], event["disclosure_hash"])
        breaks = judged.get(cites)
        if breaks is None:
            breaks = judged[cites] = _catalog_breaks(event, cited, tenant)
        for kind, detail in breaks:
            report.add(kind, detail, event)
        if event["evidence_id"] is not None:
            raw = raw_by_id.get(event["evidence_id"])
            if raw is None:
                report.add("evidence_mismatch", "the evidence row the event commits to is gone", event)
            elif raw["commitment"] != event["evidence_commitment"]:
                report.add("evidence_mismatch", "the evidence row carries another commitment", event)
            elif raw["purged_at"] is None and _commitment(commitments, raw, secret) != event["evidence_commitment"]:
                # purged rows keep only the commitment, which the chain itself covers
                report.add("evidence_mismatch", "the raw evidence does not match the event's commitment", event)


def _logged(report: Report, events: list[Mapping[str, Any]], rows: list[Mapping[str, Any]],
            first_v2: int | None) -> dict[str, int]:
    """`events`: the subject's events and duty records (both are leaves of the log)."""
    found = {r["event_id"]: r for r in rows}
    for event in events:
        entry = found.get(event["id"])
        if event.get("chain_version") == 1 and first_v2 is not None and entry is not None and \
                (entry["idx"] is None or entry["idx"] > first_v2):
            report.add("legacy_after_v2", f"a version 1 event placed in the log after its first version 2 event "
                                          f"(leaf {first_v2}): not history from before the upgrade", event)
        if entry is None:
            report.add("not_in_log", f"the {'event' if 'chain_version' in event else 'duty record'} is neither in "
                                     "the Merkle log nor queued for it", event)
        elif entry["event_hash"] != event["hash"]:
            report.add("log_mismatch", "the Merkle log holds another hash for this event", event)
    stored = {event["id"] for event in events}
    for entry in rows:
        if entry["event_id"] not in stored:
            where = f"log index {entry['idx']}" if entry["idx"] is not None else "the log queue"
            report.add("missing_event", f"{where} holds event or duty record {entry['event_id']} of this "
                                        "subject, which is no longer in the ledger")
    pending = sum(1 for r in rows if r["pending"])
    return {"logged": len(rows) - pending, "pending": pending}


def check(subject: Mapping[str, Any], *, events: list[Mapping[str, Any]], states: list[Mapping[str, Any]],
          cited: Cited, evidence: list[Mapping[str, Any]], logged: list[Mapping[str, Any]],
          duty_records: list[Mapping[str, Any]], duties: list[Mapping[str, Any]], first_v2: int | None,
          secret: bytes, typed: bool) -> dict[str, Any]:
    """Every check of one subject on rows already read (one snapshot): `verify` below reads them for
    one subject, app/audit/verify_batch.py for many at once. `typed`: the events came from a
    statement chain.typed_rows accepted."""
    tenant = subject["tenant_id"]
    report = Report()
    log = {"logged": 0, "pending": 0}
    try:
        _chain(report, subject, events, secret, typed)
        _state(report, events, states)
        _cited(report, events, cited, evidence, secret, tenant)
        duty_checks.check(report.add, tenant=tenant, member=subject["external_id"], events=events,
                          records=duty_records, duties=duties, secret=secret)
        log = _logged(report, [*events, *duty_records], logged, first_v2)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        # A row of a shape the service never writes (a column retyped to an array or JSON behind its
        # back, say) can trip a check that expects the table's own types: that is itself the break,
        # reported, never a crash of the verify or of a tenant-wide run.
        report.add("unreadable_row", f"a row has a shape the service never writes ({type(exc).__name__}: "
                                     f"{str(exc)[:200]}); the checks after it did not run")
    return {"subject_id": subject["external_id"], "valid": not report.breaks, "events_checked": len(events),
            "duty_records_checked": len(duty_records),
            "head_hash": subject["last_hash"], "log": log, "breaks": report.breaks,
            "first_break": report.breaks[0] if report.breaks else None}


def cited_ids(events: list[Mapping[str, Any]]) -> tuple[list[Any], list[Any], list[Any]]:
    """The CITED query's arguments: the purposes, collection points and notices the events name."""
    return (list({e["purpose_id"] for e in events}),
            list({e["collection_point_id"] for e in events if e["collection_point_id"]}),
            list({e["notice_id"] for e in events if e["notice_id"]}))


async def verify(pool: asyncpg.Pool, tenant: str, external_id: str, secret: bytes) -> dict[str, Any]:
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        return await verify_in(conn, tenant, external_id, secret)


async def verify_in(conn: asyncpg.Connection, tenant: str, external_id: str, secret: bytes) -> dict[str, Any]:
    """`verify` on a connection whose (repeatable-read) transaction the caller holds, so that what it
    reads next (e.g. the certificate's history and proofs) is the snapshot just checked."""
    subject = await conn.fetchrow(SUBJECT, tenant, external_id)
    if subject is None:
        raise NotFound(f"no subject {external_id!r}")
    events = await conn.fetch(EVENTS, subject["id"])  # a few events: the general hash path, no prepare
    states = await conn.fetch(STATES, subject["id"])
    cited = Cited(await conn.fetch(CITED, *cited_ids(events)))
    evidence = await conn.fetch(EVIDENCE, subject["id"])
    logged = await conn.fetch(LOG, subject["id"])
    duty_records = await conn.fetch(duty_checks.RECORDS, subject["id"])
    duties = await conn.fetch(duty_checks.DUTIES, subject["id"])
    first_v2 = await conn.fetchval(FIRST_V2_LEAF, tenant) if any(e["chain_version"] == 1 for e in events) \
        else None
    return check(subject, events=events, states=states, cited=cited, evidence=evidence, logged=logged,
                 duty_records=duty_records, duties=duties, first_v2=first_v2, secret=secret, typed=False)
