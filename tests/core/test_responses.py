"""The wire text of hand-built JSON responses and webhook bodies: what auditors and receivers read
(and what a stored webhook body was signed over) does not change with the encoder underneath."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

from asyncpg.pgproto import pgproto

from app.core.responses import dumps, json_response

KST = timezone(timedelta(hours=9))


def test_times_are_utc_with_z_whatever_their_offset_and_uuids_are_strings():
    ident = str(uuid.uuid4())
    payload = {
        "at": datetime(2026, 3, 1, 9, 0, 0, 250000, tzinfo=KST),
        "whole": datetime(2026, 3, 1, 0, 0, tzinfo=UTC),
        "event_id": pgproto.UUID(ident), "plain_uuid": uuid.UUID(ident),
        "purpose": "마케팅 수신 동의", "n": 9007199254740993, "none": None, "ok": True,
    }
    text = dumps(payload)
    assert text == (
        '{"at":"2026-03-01T00:00:00.250000Z","whole":"2026-03-01T00:00:00Z",'
        f'"event_id":"{ident}","plain_uuid":"{ident}",'
        '"purpose":"마케팅 수신 동의","n":9007199254740993,"none":null,"ok":true}')
    assert json.loads(text)["purpose"] == "마케팅 수신 동의"


def test_json_response_sends_the_same_bytes_as_utf8():
    response = json_response({"subject_id": "회원-1"}, status_code=201)
    assert response.status_code == 201
    assert response.body == '{"subject_id":"회원-1"}'.encode()
    assert response.headers["content-type"] == "application/json"
