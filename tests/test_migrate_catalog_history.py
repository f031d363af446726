"""Rows that existed before the catalog's history (revision 0009) get a baseline from the time they
are known to be as they are; the form as it was is answered from then on, and "not known" before
(docs/audit.md, "The form as it was")."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import asyncpg
import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.auth.deps import Principal
from app.catalog import history
from app.core.db import session_factory
from app.core.errors import Conflict
from app.demo.tenants import SMALLTICKET
from tests.conftest import _plain
from tests.test_migrations import _config, scratch  # noqa: F401 - the fixture

JAN, FEB, MAR = (datetime(2026, m, 1, tzinfo=UTC) for m in (1, 2, 3))
BASELINES = text("SELECT entity, count(*) FROM catalog_changes WHERE tenant_id = 'before' AND op = 'baseline' "
                 "GROUP BY entity")
DISCLOSURES = next(p for p in SMALLTICKET["purposes"] if p["key"] == "analytics")["disclosures"]


async def _seed(url: str) -> None:
    conn = await asyncpg.connect(_plain(url))
    try:
        await conn.execute("INSERT INTO tenants (id, name, created_at) VALUES ('before', '옛 고객사', $1)", JAN)
        await conn.execute(
            "INSERT INTO notices (tenant_id, key, version, title, body, sha256, effective_at, published_at, created_at)"
            " VALUES ('before', 'policy', 'v1', '방침', '본문', 'h', $1, $1, $1)", JAN)
        ids = {}
        for key, updated in (("kept", JAN), ("reworded", MAR)):  # "reworded" changed on 1 March
            ids[key] = await conn.fetchval(
                "INSERT INTO purposes (tenant_id, key, kind, category, disclosures, disclosure_hash, active, created_at, "
                "updated_at) VALUES ('before', $1, 'optional', 'collection_use', $2::jsonb, $1, true, $3, $4) RETURNING id",
                key, json.dumps(DISCLOSURES), JAN, updated)
        for point, purpose in (("plain", "kept"), ("changed", "reworded")):
            point_id = await conn.fetchval(
                "INSERT INTO collection_points (tenant_id, key, name, kind, notice_key, created_at, updated_at) "
                "VALUES ('before', $1, $1, 'signup', 'policy', $2, $2) RETURNING id", point, JAN)
            await conn.execute("INSERT INTO collection_point_purposes (collection_point_id, purpose_id, position) "
                               "VALUES ($1, $2, 0)", point_id, ids[purpose])
    finally:
        await conn.close()


async def _forms(url: str) -> None:
    engine = create_async_engine(url)
    principal = Principal(tenant="before", sub="auditor", scopes=frozenset({"audit:read"}))
    try:
        async with session_factory(engine)() as session:
            plain = await history.form_at(session, principal, "plain", FEB)
            assert [p.key for p in plain.purposes] == ["kept"] and plain.notice.version == "v1"
            with pytest.raises(Conflict, match="starts at 2026-03-01"):
                await history.form_at(session, principal, "changed", FEB)  # its purpose changed after: unknown
            assert [p.key for p in (await history.form_at(session, principal, "changed", MAR)).purposes] == ["reworded"]
            baselines = dict((await session.execute(BASELINES)).all())
            assert baselines == {"tenants": 1, "notices": 1, "purposes": 2, "collection_points": 2,
                                 "collection_point_purposes": 2, "history": 1}
            # A point deleted before the history began left nothing: "not there" is not known either.
            with pytest.raises(Conflict, match="history starts at"):
                await history.form_at(session, principal, "deleted-long-ago", FEB)
    finally:
        await engine.dispose()


def test_rows_made_before_the_history_are_known_from_their_last_change(scratch):  # noqa: F811
    command.upgrade(_config(scratch), "0008")
    asyncio.run(_seed(scratch))
    command.upgrade(_config(scratch), "head")
    asyncio.run(_forms(scratch))
    command.downgrade(_config(scratch), "0008")
    command.upgrade(_config(scratch), "head")
