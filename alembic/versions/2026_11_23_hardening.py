"""hardening: fair webhook claiming, bounded growth, tenants

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 00:00:00+00:00

Each capability keeps its own pair of functions below, so they can be read (and reverted) apart.
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


# --- webhook worker: fair claiming across endpoints -------------------------------------------------

def _upgrade_worker() -> None:
    # The claim reads each endpoint's own range of due rows instead of one global age window, and
    # the next-due timer does too: the global index on next_attempt_at has no reader left.
    op.create_index('ix_webhook_deliveries_endpoint_due', 'webhook_deliveries', ['endpoint_id', 'next_attempt_at'],
                    unique=False, postgresql_where=sa.text("status = 'pending'"))
    op.drop_index('ix_webhook_deliveries_due', table_name='webhook_deliveries',
                  postgresql_where=sa.text("status = 'pending'"))


def _downgrade_worker() -> None:
    op.create_index('ix_webhook_deliveries_due', 'webhook_deliveries', ['next_attempt_at'], unique=False,
                    postgresql_where=sa.text("status = 'pending'"))
    op.drop_index('ix_webhook_deliveries_endpoint_due', table_name='webhook_deliveries',
                  postgresql_where=sa.text("status = 'pending'"))


# --- bounded growth and tenants ---------------------------------------------------------------------

def _upgrade_growth() -> None:
    # Read by nothing (checked against every query in app/, see docs/design.md), paid by every write:
    # no audit query lists a tenant's events by time yet, and no query finds a message by event.
    op.drop_index('ix_consent_events_tenant_recorded', table_name='consent_events')
    op.drop_index('ix_webhook_messages_event_id', table_name='webhook_messages')
    op.drop_index('ix_webhook_messages_tenant_created', table_name='webhook_messages')
    # The delivery log filtered by subject; the purge's way to expired idempotency keys.
    op.create_index('ix_webhook_messages_subject', 'webhook_messages', ['subject_ref'], unique=False)
    op.create_index('ix_idempotency_keys_created', 'idempotency_keys', ['created_at'], unique=False,
                    postgresql_using='brin')


def _downgrade_growth() -> None:
    op.drop_index('ix_idempotency_keys_created', table_name='idempotency_keys', postgresql_using='brin')
    op.drop_index('ix_webhook_messages_subject', table_name='webhook_messages')
    op.create_index('ix_webhook_messages_tenant_created', 'webhook_messages', ['tenant_id', 'created_at', 'id'],
                    unique=False)
    op.create_index('ix_webhook_messages_event_id', 'webhook_messages', ['event_id'], unique=False)
    op.create_index('ix_consent_events_tenant_recorded', 'consent_events', ['tenant_id', 'recorded_at'],
                    unique=False)


def upgrade() -> None:
    _upgrade_worker()
    _upgrade_growth()


def downgrade() -> None:
    _downgrade_growth()
    _downgrade_worker()
