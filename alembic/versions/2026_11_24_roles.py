"""roles: the runtime role's privileges, exactly (app/core/roles.py)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 00:00:00+00:00

Runs as the owner role (DATABASE_OWNER_URL). The runtime role (DB_RUNTIME_ROLE, default
consent_ledger_runtime) must exist already: a DBA creates it (README, "Database roles"); `make run`
and the tests create it themselves.
"""

from __future__ import annotations

from alembic import op

from app.core import roles
from app.core.migrating import present, runtime_role

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in roles.grant_statements(runtime_role(), present()):
        op.execute(statement)
    op.execute(roles.REVOKE_PUBLIC_CREATE)


def downgrade() -> None:
    # CREATE on schema public stays revoked from PUBLIC: PostgreSQL 15+ default, and safer on 14.
    for statement in roles.revoke_statements(runtime_role(), present()):
        op.execute(statement)
