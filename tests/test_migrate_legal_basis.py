"""Purposes made before the legal model (revision 0006) stay what they were: every one rests on
consent (PIPA Art. 15(1)1), its category is its kind's, and the pre-2023 kind "required" stays on
the purposes that had it (docs/legal-model.md)."""

from __future__ import annotations

import asyncio

import asyncpg
from alembic import command

from tests.conftest import _plain
from tests.test_migrations import _config, scratch  # noqa: F401 - the fixture

KINDS = ("required", "optional", "marketing", "third_party", "sensitive")


async def _seed(url: str) -> None:
    conn = await asyncpg.connect(_plain(url))
    try:
        await conn.execute("INSERT INTO tenants (id, name) VALUES ('before', '옛 고객사')")
        recipient = await conn.fetchval(
            "INSERT INTO recipients (tenant_id, key, name) VALUES ('before', 'r', '수신자') RETURNING id")
        for kind in KINDS:
            await conn.execute(
                "INSERT INTO purposes (tenant_id, key, kind, recipient_id, disclosures, disclosure_hash, active) "
                "VALUES ('before', $1, $1, $2, '{}'::jsonb, 'h', true)", kind,
                recipient if kind == "third_party" else None)
    finally:
        await conn.close()


async def _purposes(url: str) -> dict[str, tuple]:
    conn = await asyncpg.connect(_plain(url))
    try:
        rows = await conn.fetch("SELECT key, kind, legal_basis, category FROM purposes WHERE tenant_id = 'before'")
        return {r["key"]: (r["kind"], r["legal_basis"], r["category"]) for r in rows}
    finally:
        await conn.close()


def test_pipa_15_1_1_purposes_made_before_the_legal_model_keep_consent_and_their_kind(scratch):  # noqa: F811
    command.upgrade(_config(scratch), "0005")
    asyncio.run(_seed(scratch))
    command.upgrade(_config(scratch), "head")
    assert asyncio.run(_purposes(scratch)) == {
        "required": ("required", "consent", "collection_use"),
        "optional": ("optional", "consent", "collection_use"),
        "marketing": ("marketing", "consent", "marketing"),
        "third_party": ("third_party", "consent", "third_party"),
        "sensitive": ("sensitive", "consent", "sensitive"),
    }
    command.downgrade(_config(scratch), "0005")  # and back: the kinds are as they were
    command.upgrade(_config(scratch), "head")
