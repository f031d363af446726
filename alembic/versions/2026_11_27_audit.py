"""audit: the index behind the tenant-wide search and export of events (app/audit/)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 00:00:00+00:00

(tenant_id, recorded_at, id): a page of the tenant's events in recorded order after a keyset, and
a time range, are one index range scan. Revision 0003 dropped (tenant_id, recorded_at) from the
write path when nothing read by it; the auditors' side does (bench/README.md, "Issue 11").
"""

from __future__ import annotations

from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_consent_events_tenant_recorded_id', 'consent_events', ['tenant_id', 'recorded_at', 'id'])


def downgrade() -> None:
    op.drop_index('ix_consent_events_tenant_recorded_id', table_name='consent_events')
