"""The verification's fast paths give exactly what the general ones give: format_time against
strftime, row_hash against stored_hash (RFC 8785 through `rfc8785` where it must), and a schema
altered behind the service's back takes the general path."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
import rfc8785

from app.audit import verify_batch
from app.consents import chain
from tests.consents.test_rogue_dba import as_rogue, subject_row
from tests.core.test_hashing import _string
from tests.helpers import sign_up


def _instant(rng: random.Random) -> datetime:
    at = datetime(1000, 1, 2, tzinfo=UTC) + timedelta(microseconds=rng.randrange(8998 * 365 * 86400 * 10**6))
    if rng.random() < 0.3:
        at = at.replace(microsecond=0)
    if rng.random() < 0.3:
        at = at.astimezone(timezone(timedelta(minutes=rng.randrange(-12 * 60, 14 * 60))))
    return at


def test_format_time_is_strftimes_text():
    rng = random.Random(3339)
    for _ in range(20000):
        at = _instant(rng)
        assert chain.format_time(at) == at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), at
    for at in (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), datetime(1000, 1, 1, tzinfo=UTC),
               datetime(999, 12, 31, 23, 59, 59, 1, tzinfo=UTC), datetime(2024, 2, 29, 0, 0, 0, 1, tzinfo=UTC)):
        assert chain.format_time(at) == at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _row(rng: random.Random) -> dict:
    def text():
        return rng.choice([None, _string(rng), "membership", "가입 약관"])

    def maybe_uuid():
        return rng.choice([None, uuid.UUID(int=rng.getrandbits(128))])

    return {
        "id": uuid.UUID(int=rng.getrandbits(128)), "seq": rng.choice([1, 7, 2**53 - 1, rng.randrange(1, 10**9)]),
        "request_id": uuid.UUID(int=rng.getrandbits(128)), "chain_version": 2, "purpose_key": _string(rng),
        "version": rng.choice([1, 2, 2**31 - 1]), "action": text(), "status": text(), "previous_status": text(),
        "collection_point_key": text(), "notice_id": maybe_uuid(), "notice_key": text(), "notice_version": text(),
        "notice_sha256": text(), "notice_superseded_at": rng.choice([None, _instant(rng)]),
        "disclosure_hash": text(), "method": text(), "actor_type": text(), "actor_ref": text(),
        "evidence_id": maybe_uuid(), "evidence_commitment": text(), "occurred_at": _instant(rng),
        "recorded_at": _instant(rng), "reason": text(), "prev_hash": text(),
    }


def test_row_hash_is_stored_hash_on_fuzzed_rows():
    rng = random.Random(8785)
    for _ in range(5000):
        row, tenant, member = _row(rng), _string(rng), _string(rng)
        assert chain.row_hash(row, tenant=tenant, subject_ref=member) == \
            chain.stored_hash(row, tenant=tenant, subject_ref=member), row
        # and both are SHA-256 of the document's RFC 8785 form, as an outside verifier computes it
        doc = chain.document(row, tenant=tenant, subject_ref=member)
        assert chain.row_hash(row, tenant=tenant, subject_ref=member) == chain.sha256_hex(rfc8785.dumps(doc))


def test_row_hash_refuses_what_rfc8785_refuses():
    row = _row(random.Random(1)) | {"seq": 2**60}
    with pytest.raises(rfc8785.IntegerDomainError):
        chain.row_hash(row, tenant="t", subject_ref="m")


def test_typed_rows_wants_every_printed_column_with_its_type():
    def attrs(**changed):
        types = {**chain._ROW_TYPES, **changed}
        return [SimpleNamespace(name=n, type=SimpleNamespace(schema="pg_catalog", name=t)) for n, t in types.items()
                if t]

    assert chain.typed_rows(attrs())
    assert not chain.typed_rows(attrs(reason="jsonb"))
    assert not chain.typed_rows(attrs(seq="numeric"))
    assert not chain.typed_rows(attrs(recorded_at="text"))
    assert not chain.typed_rows(attrs(prev_hash=None))
    shadow = attrs()
    shadow[0] = SimpleNamespace(name=shadow[0].name, type=SimpleNamespace(schema="public", name=shadow[0].type.name))
    assert not chain.typed_rows(shadow)  # a type of the same name in another schema


def test_format_time_of_a_datetime_subclass():
    class Pendulum(datetime):
        pass

    at = Pendulum(2024, 5, 3, 12, 1, 2, 345678, tzinfo=UTC)
    assert chain.format_time(at) == "2024-05-03T12:01:02.345678Z"


async def test_the_live_table_is_typed_and_an_altered_one_takes_the_general_path(client, auth, demo, db):
    headers = auth(demo, "consents:write", "audit:read")
    assert (await sign_up(client, headers, "typed-1", granted={"marketing"})).status_code == 201
    subject = await subject_row(db, demo, "typed-1")
    statement = await db.prepare(verify_batch.EVENTS)
    assert chain.typed_rows(statement.get_attributes())
    transaction = db.transaction()
    await transaction.start()
    try:  # a column retyped behind the service's back, undone after
        await db.execute("ALTER TABLE consent_events ALTER COLUMN reason TYPE varchar")
        statement = await db.prepare(verify_batch.EVENTS)
        assert not chain.typed_rows(statement.get_attributes())
        events = await statement.fetch([subject["id"]])
        assert events and all(e["hash"] == chain.stored_hash(e, tenant=demo, subject_ref="typed-1") for e in events)
    finally:
        await transaction.rollback()


async def test_a_tampered_event_is_caught_on_the_fast_path(client, auth, demo, db):
    headers = auth(demo, "consents:write", "audit:read")
    assert (await sign_up(client, headers, "typed-2", granted={"marketing"})).status_code == 201
    subject = await subject_row(db, demo, "typed-2")
    await as_rogue(db, ("UPDATE consent_events SET reason = 'x' WHERE subject_id = $1 AND seq = 1", subject["id"]))
    statement = await db.prepare(verify_batch.EVENTS)
    events = await statement.fetch([subject["id"]])
    assert chain.typed_rows(statement.get_attributes())
    altered = [e["seq"] for e in events if chain.row_hash(e, tenant=demo, subject_ref="typed-2") != e["hash"]]
    assert altered == [1]
    response = await client.get("/v1/subjects/typed-2/consents/verify", headers=headers)
    assert response.json()["first_break"]["kind"] == "altered_event"


@pytest.mark.parametrize("alteration", [
    "ALTER TABLE consent_events ALTER COLUMN purpose_key TYPE text[] USING ARRAY[purpose_key]",
    "ALTER TABLE consent_events ALTER COLUMN disclosure_hash TYPE jsonb USING to_jsonb(ARRAY[disclosure_hash])",
    "UPDATE consent_events SET seq = seq + (1::bigint << 60) WHERE subject_id = $1",
])
async def test_rows_of_alien_shapes_are_reported_not_a_crash(app, client, auth, demo, db, alteration):
    """A DBA who retypes a column, or writes an integer no JSON verifier can read, makes the subject
    broken: the verify reports it (never a 500, never a tenant-wide run ended by an error)."""
    from app.consents import verification
    from app.core.db import _init_connection

    headers = auth(demo, "consents:write", "audit:read")
    assert (await sign_up(client, headers, "alien-1", granted={"marketing"})).status_code == 201
    subject = await subject_row(db, demo, "alien-1")
    await _init_connection(db)  # JSON decoded as the service's pools decode it
    transaction = db.transaction(isolation="repeatable_read")  # as the verifiers read
    await transaction.start()
    try:  # undone after: the other tests share the table
        await db.execute("SET LOCAL session_replication_role = replica")
        await db.execute(alteration, *([subject["id"]] if "$1" in alteration else []))
        report = await verification.verify_in(db, demo, "alien-1", app.state.proof.secret)
        batch = await verify_batch._check_batch(db, demo, None, 10**6, app.state.proof.secret, None, None)
    finally:
        await transaction.rollback()
    assert report["valid"] is False and report["breaks"], report
    assert {"altered_event", "unreadable_row"} & {b["kind"] for b in report["breaks"]}
    assert "alien-1" in {b["subject_id"] for b in batch.broken}


def test_an_hour_repeated_by_a_clock_change_is_two_instants():
    """`==` ignores fold within one zone: 01:30 twice on a night clocks go back are an hour apart,
    and each prints its own instant (the last text row_hash keeps is a UTC instant's only)."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo("America/New_York")
    first, second = (datetime(2021, 11, 7, 1, 30, tzinfo=zone, fold=f) for f in (0, 1))
    assert first == second and first.astimezone(UTC) != second.astimezone(UTC)
    row = _row(random.Random(7))
    for at in (first, second, first):
        changed = row | {"recorded_at": at, "occurred_at": at}
        assert chain.row_hash(changed, tenant="t", subject_ref="m") == \
            chain.stored_hash(changed, tenant="t", subject_ref="m")
