"""roles: the runtime role's privileges, exactly (app/core/roles.py)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 00:00:00+00:00

Runs as the owner role (DATABASE_OWNER_URL). The runtime role (DB_RUNTIME_ROLE, default
consent_ledger_runtime) must exist already: a DBA creates it (README, "Database roles"); `make run`
and the tests create it themselves.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from app.core import roles
from app.core.settings import Settings

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def _role() -> str:
    role = context.config.attributes.get("runtime_role") or Settings.from_env().db_runtime_role
    if not context.is_offline_mode():
        found = op.get_bind().execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": role})
        if found.scalar() is None:
            raise RuntimeError(roles.missing_role_message(role))
    return role


def present() -> set[str] | None:
    """The tables and functions that exist now (None offline: all of roles.py)."""
    if context.is_offline_mode():
        return None
    return {row[0] for row in op.get_bind().execute(sa.text(roles.PRESENT))}


def upgrade() -> None:
    for statement in roles.grant_statements(_role(), present()):
        op.execute(statement)
    op.execute(roles.REVOKE_PUBLIC_CREATE)


def downgrade() -> None:
    # CREATE on schema public stays revoked from PUBLIC: PostgreSQL 15+ default, and safer on 14.
    for statement in roles.revoke_statements(_role(), present()):
        op.execute(statement)
