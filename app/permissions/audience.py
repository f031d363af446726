"""POST /v1/permissions/{channel}/check: a campaign's audience checked at once.

The same rules as the single check (app/permissions/rules.py) on the same data: the subjects'
consent states as the ledger keeps them, in the same transaction as their events (so a withdrawal
committed before the call is seen; nothing here is a cache), or the events themselves for an
instant in the past. The rules depend only on the statuses of the tenant's few marketing purposes
(and, with goods named, on whether a transaction stands in), so each distinct combination is
decided once, whatever the audience's size.

JSON in and out for up to MAX_IDS member ids; NDJSON (`application/x-ndjson`, one member id as a
JSON string or {"subject_id": ...} per line) streams in and out without a limit on the count,
CHUNK ids at a time, memory flat.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from app.core.errors import FieldError, InvalidRequest
from app.permissions import duty_reasons, rules
from app.permissions.rules import PurposeState

MAX_IDS = 100_000
CHUNK = 100_000  # one statement: its cost is mostly per statement (hash tables of the tenant), not per id
MAX_ID_LENGTH = 255

PURPOSES = """
SELECT id, key, channel, advertises FROM purposes
WHERE tenant_id = $1 AND category = 'marketing' AND legal_basis = 'consent' AND active ORDER BY key
"""
# Each status as 3 bits, a purpose's place in $3 giving its bits' place: one bigint per member id
# holds up to MAX_PURPOSES statuses (beyond that, more statements), -1 for an unknown member id,
# and bit 63 (negated into the sign) is never used. The answer is ONE row holding one array in the
# ids' order: 100,000 rows would cost the API more to decode than the database to find.
STATUS_CODES = (None, "granted", "refused", "withdrawn", "expired", "revoked", "acknowledged")
MAX_PURPOSES = 20
_CODE = ("CASE st.status WHEN 'granted' THEN 1 WHEN 'refused' THEN 2 WHEN 'withdrawn' THEN 3 "
         "WHEN 'expired' THEN 4 WHEN 'revoked' THEN 5 ELSE 6 END")
_CUSTOMER = """
CASE WHEN $4::text IS NULL THEN 0 ELSE (EXISTS (SELECT 1 FROM subject_transactions t
    WHERE t.subject_id = subj.id AND t.goods_category = $4
      AND t.transacted_at <= $5 AND t.transacted_at + interval '6 months' >= $5))::int END
"""
CURRENT = f"""
WITH subj AS (
    SELECT ids.n, s.id FROM unnest($2::text[]) WITH ORDINALITY AS ids(external_id, n)
    LEFT JOIN subjects s ON s.tenant_id = $1 AND s.external_id = ids.external_id
), states AS (
    SELECT st.subject_id, bit_or(({_CODE})::bigint << (3 * (array_position($3::uuid[], st.purpose_id) - 1))) AS bits
    FROM consent_states st
    WHERE st.tenant_id = $1 AND st.purpose_id = ANY($3::uuid[]) AND st.subject_id IN (SELECT id FROM subj)
    GROUP BY st.subject_id
)
SELECT array_agg(CASE WHEN subj.id IS NULL THEN -1
                      ELSE COALESCE(states.bits, 0) * 2 + ({_CUSTOMER}) END ORDER BY subj.n) AS signatures
FROM subj LEFT JOIN states ON states.subject_id = subj.id
"""
# An instant in the past: each status from the events as of then (slower: an index probe per
# member id and purpose), packed the same way.
AS_OF = f"""
WITH subj AS (
    SELECT ids.n, s.id FROM unnest($2::text[]) WITH ORDINALITY AS ids(external_id, n)
    LEFT JOIN subjects s ON s.tenant_id = $1 AND s.external_id = ids.external_id
)
SELECT array_agg(CASE WHEN subj.id IS NULL THEN -1 ELSE COALESCE((
    SELECT bit_or(({_CODE})::bigint << (3 * (p.n::int - 1)))
    FROM unnest($3::uuid[]) WITH ORDINALITY AS p(id, n)
    CROSS JOIN LATERAL (SELECT e.status FROM consent_events e
                        WHERE e.subject_id = subj.id AND e.purpose_id = p.id AND e.recorded_at <= $5
                        ORDER BY e.seq DESC LIMIT 1) st), 0) * 2 + ({_CUSTOMER}) END ORDER BY subj.n) AS signatures
FROM subj
"""

_NO_EVENT = dict.fromkeys(("id", "seq", "action", "recorded_at", "hash"))


class Checker:
    """Decides member ids in chunks for one (tenant, channel, instant, goods)."""

    def __init__(self, pool: asyncpg.Pool, tenant: str, channel: str, at: datetime | None, goods: str | None) -> None:
        self.pool, self.tenant, self.channel, self.goods = pool, tenant, channel, goods
        now = datetime.now(UTC)
        self.at = at or now
        self.current = self.at >= now  # now or later: the current states; before: the events then
        self.purposes: list[asyncpg.Record] = []
        self.decided: dict[int, tuple[bool, tuple[str, ...]]] = {}  # signature -> (allowed, blocking codes)
        self.counts = {"checked": 0, "allowed": 0, "denied": 0}
        self.reasons: dict[str, dict[str, str]] = {}  # code -> article and an example detail
        self.duties = False  # some member has a duty that denies (duty_reasons.ANY_DENYING)

    def _decide(self, signature: int) -> tuple[bool, tuple[str, ...]]:
        found = self.decided.get(signature)
        if found is None:
            known, customer = signature >= 0, signature > 0 and signature & 1 == 1
            bits = signature >> 1 if known else 0
            statuses = [STATUS_CODES[(bits >> (3 * i)) & 7] for i in range(len(self.purposes))]
            key = (known, statuses)
            states = [PurposeState(key=p["key"], channel=p["channel"], advertises=tuple(p["advertises"]),
                                   event={**_NO_EVENT, "status": status} if status is not None else None)
                      for p, status in zip(self.purposes, key[1])]
            stub = {"id": None, "goods_category": self.goods, "transacted_at": self.at} if customer else None
            answer = rules.decide(self.channel, self.at, states, self.goods, stub)
            if not known:
                answer.add("subject_unknown", False, rules.ARTICLES["channel"], "nothing was ever recorded for this "
                                                                                "member id")
            blocking = tuple(r["code"] for r in answer.reasons if not r["allows"])
            for r in answer.reasons:
                if not r["allows"]:
                    self.reasons.setdefault(r["code"], {"article": r["article"], "detail": r["detail"]})
            found = self.decided[signature] = (answer.allowed, blocking)
        return found

    def _night(self) -> bool:
        return rules.is_night(self.at) and self.channel not in rules.NIGHT_EXEMPT

    async def start(self) -> None:
        self.purposes = await self.pool.fetch(PURPOSES, self.tenant)
        # overdue reconfirmations the tenant counts as a denial, fresh consent owed: rare, so first
        # whether the tenant has any (docs/duties.md)
        self.duties = await self.pool.fetchval(
            duty_reasons.ANY_DENYING if self.current else duty_reasons.ANY_DENYING_THEN, self.tenant, self.at,
            self.channel, self._night())
        if len(self.purposes) > MAX_PURPOSES:
            raise InvalidRequest(f"the audience check handles at most {MAX_PURPOSES} marketing purposes per tenant "
                                 f"(this one has {len(self.purposes)}); ask the single check")

    def _duty_denied(self, item: tuple[str, bool, tuple[str, ...]], duty: Any) -> tuple[str, bool, tuple[str, ...]]:
        if duty is None:
            return item
        code, article, detail = duty_reasons.detail(duty)
        self.reasons.setdefault(code, {"article": article, "detail": detail})
        return item[0], False, (*item[2], code)

    async def chunk(self, ids: list[str]) -> list[tuple[str, bool, tuple[str, ...]]]:
        """[(member id, allowed, blocking reason codes)] in the order given."""
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            # the hash tables of 100,000 ids: in memory rather than in temporary files
            await conn.execute("SET LOCAL work_mem = '64MB'")
            signatures = await conn.fetchval(CURRENT if self.current else AS_OF, self.tenant, ids,
                                             [p["id"] for p in self.purposes], self.goods, self.at)
            denied = {} if not self.duties else {
                r["external_id"]: r for r in await conn.fetch(duty_reasons.DENYING, self.tenant, self.at, self.channel,
                                                              self._night(), ids)}
        decide = self._decide
        out = [(subject_id, *decide(signature)) for subject_id, signature in zip(ids, signatures or ())]
        if denied:
            out = [self._duty_denied(item, denied.get(item[0])) for item in out]
        self.counts["checked"] += len(out)
        allowed_count = sum(1 for _, a, _ in out if a)
        self.counts["allowed"] += allowed_count
        self.counts["denied"] += len(out) - allowed_count
        return out


def check_ids(value: Any, field: str) -> list[str]:
    """A list of member ids, each 1-255 characters of text without NUL, or 422."""
    if not isinstance(value, list):
        raise InvalidRequest("subject_ids must be a list of member ids",
                             errors=[FieldError(field=field, reason="a JSON array of strings")])
    if len(value) > MAX_IDS:
        raise InvalidRequest(f"at most {MAX_IDS:,} member ids per request; stream more as NDJSON",
                             errors=[FieldError(field=field, reason=f"{len(value):,} given")])
    for i, item in enumerate(value):
        if not isinstance(item, str) or not 0 < len(item) <= MAX_ID_LENGTH or "\x00" in item:
            raise InvalidRequest("a member id is not 1-255 characters of text", errors=[FieldError(
                field=f"{field}[{i}]", reason="1-255 characters, no NUL")])
    return value


async def ndjson_ids(stream: AsyncIterator[bytes]) -> AsyncIterator[list[str]]:
    """Member ids from NDJSON lines, CHUNK at a time (a line is "id" or {"subject_id": "id"})."""
    buffer, batch, line_no = b"", [], 0
    async for data in stream:
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            line_no += 1
            if line.strip():
                batch.append(_ndjson_id(line, line_no))
                if len(batch) >= CHUNK:
                    yield batch
                    batch = []
    if buffer.strip():
        batch.append(_ndjson_id(buffer, line_no + 1))
    if batch:
        yield batch


def _ndjson_id(line: bytes, line_no: int) -> str:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, dict) and set(value) == {"subject_id"}:
        value = value["subject_id"]
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH or "\x00" in value:
        raise InvalidRequest(f"line {line_no} is not a member id", errors=[FieldError(
            field=f"body[line {line_no}]", reason='a JSON string or {"subject_id": "..."}, 1-255 characters')])
    return value


# --- the route -------------------------------------------------------------------------------------

JSON_MAX_BYTES = 8 * 1024 * 1024  # 100,000 ids of up to ~60 bytes each; an NDJSON stream has no such limit
NDJSON = "application/x-ndjson"
PATH_PATTERN = r"/v1/permissions/[^/]+/check"


