"""verifications: tenant-wide verification runs and their progress (app/audit/verify_job.py)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28 00:00:00+00:00

The runtime role (the worker) writes these rows: SELECT, INSERT, UPDATE on this table only, nothing
new on the ledger's tables. A run is a report an auditor can repeat, not evidence (docs/audit.md).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from app.audit.models import STAGES, STATUSES
from app.core.migrating import grant_runtime
from app.core.models import sql_in

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False, default: bool = False) -> sa.Column:
    return sa.Column(name, postgresql.TIMESTAMP(timezone=True), nullable=nullable,
                     server_default=sa.text('now()') if default else None)


def _count(name: str) -> sa.Column:
    return sa.Column(name, sa.BigInteger(), server_default='0', nullable=False)


def upgrade() -> None:
    op.create_table(
        'verification_runs',
        sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
        sa.Column('tenant_id', sa.Text(), nullable=False),
        sa.Column('requested_by', sa.Text(), nullable=False),
        sa.Column('status', sa.Text(), server_default='running', nullable=False),
        sa.Column('stage', sa.Text(), server_default='subjects', nullable=False),
        sa.Column('valid', sa.Boolean(), nullable=True),
        sa.Column('batch_subjects', sa.Integer(), nullable=False),
        sa.Column('position', sa.Text(), nullable=True),
        _count('subjects_total'), _count('events_total'), _count('subjects_done'), _count('events_done'),
        _count('duty_records_done'), _count('broken_total'),
        sa.Column('broken', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"),
                  nullable=False),
        sa.Column('log', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('lease_owner', sa.Text(), nullable=True),
        _ts('lease_until', nullable=True),
        _ts('created_at', default=True),
        _ts('started_at', nullable=True),
        _ts('updated_at', default=True),
        _ts('finished_at', nullable=True),
        sa.CheckConstraint(sql_in('status', STATUSES), name=op.f('ck_verification_runs_status')),
        sa.CheckConstraint(sql_in('stage', STAGES), name=op.f('ck_verification_runs_stage')),
        sa.CheckConstraint('batch_subjects BETWEEN 1 AND 100000', name=op.f('ck_verification_runs_batch_subjects')),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_verification_runs_tenant_id_tenants')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_verification_runs')),
    )
    op.create_index('ux_verification_runs_running', 'verification_runs', ['tenant_id'], unique=True,
                    postgresql_where=sa.text("status = 'running'"))
    op.create_index('ix_verification_runs_tenant_created', 'verification_runs', ['tenant_id', 'created_at', 'id'])
    grant_runtime()


def downgrade() -> None:
    op.drop_table('verification_runs')
