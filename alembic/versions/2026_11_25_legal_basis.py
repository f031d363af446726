"""legal basis: each purpose's legal basis and separate-consent category; acknowledgements

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 00:00:00+00:00

docs/legal-model.md. Existing purposes keep what they were: every one rests on consent; its
category is its kind's ("required" and "optional" are collection and use). The pre-2023 kind
"required" stays on the purposes that had it (and on their events, which are never rewritten),
and is the only way a collection-and-use consent can still be a condition; new purposes cannot
have it. A non-consent purpose is "disclosed": acknowledged (action and status "acknowledged"),
never granted. Condition-of-service marks live on the collection point's presented purposes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from app.catalog.legal import CATEGORIES, LEGAL_BASES
from app.core.migrating import append_only, grant_runtime
from app.core.models import sql_in

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

KINDS_BEFORE = ("required", "optional", "marketing", "third_party", "sensitive", "unique_identifier",
                "overseas_transfer")
KINDS = KINDS_BEFORE + ("beyond_purpose", "disclosed")
ACTIONS_BEFORE = ("granted", "refused", "withdrawn", "reconfirmed", "expired", "revoked")
STATUSES_BEFORE = ("granted", "refused", "withdrawn", "expired", "revoked")
METHODS_BEFORE = ("web", "app", "phone", "paper", "email", "api")
RECIPIENT_RULE = ("CASE WHEN legal_basis <> 'consent' THEN true "
                  "WHEN category IN ('third_party', 'overseas_transfer') THEN recipient_id IS NOT NULL "
                  "ELSE recipient_id IS NULL END")


def _check(table: str, name: str, condition: str) -> None:
    op.drop_constraint(op.f(f"ck_{table}_{name}"), table, type_="check")
    op.create_check_constraint(op.f(f"ck_{table}_{name}"), table, condition)


def upgrade() -> None:
    op.add_column('purposes', sa.Column('legal_basis', sa.Text(), server_default='consent', nullable=False))
    op.add_column('purposes', sa.Column('category', sa.Text(), nullable=True))
    op.execute("UPDATE purposes SET category = CASE WHEN kind IN ('required', 'optional') THEN 'collection_use' "
               "ELSE kind END")
    op.create_check_constraint(op.f('ck_purposes_legal_basis'), 'purposes', sql_in('legal_basis', tuple(LEGAL_BASES)))
    op.create_check_constraint(op.f('ck_purposes_category'), 'purposes', f"category IS NULL OR {sql_in('category', tuple(CATEGORIES))}")
    op.create_check_constraint(op.f('ck_purposes_category_iff_consent'), 'purposes', "(legal_basis = 'consent') = (category IS NOT NULL)")
    _check('purposes', 'kind', sql_in('kind', KINDS))
    op.drop_constraint(op.f('ck_purposes_recipient_iff_third_party'), 'purposes', type_='check')
    op.create_check_constraint(op.f('ck_purposes_recipient_iff_provision'), 'purposes', RECIPIENT_RULE)

    op.add_column('collection_point_purposes', sa.Column('condition_of_service', sa.Boolean(),
                                                         server_default=sa.false(), nullable=False))
    op.add_column('webhook_endpoints', sa.Column('categories', postgresql.ARRAY(sa.Text()),
                                                 server_default='{}', nullable=False))
    op.add_column('purposes', sa.Column('advertises', postgresql.ARRAY(sa.Text()), server_default='{}',
                                        nullable=False))
    op.create_table(
        'subject_transactions',
        sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
        sa.Column('tenant_id', sa.Text(), nullable=False),
        sa.Column('subject_id', sa.Uuid(), nullable=False),
        sa.Column('goods_category', sa.Text(), nullable=False),
        sa.Column('transacted_at', postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column('recorded_by', sa.Text(), nullable=False),
        sa.Column('recorded_at', postgresql.TIMESTAMP(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['subject_id'], ['subjects.id'],
                                name=op.f('fk_subject_transactions_subject_id_subjects')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_subject_transactions')),
    )
    op.create_index('ix_subject_transactions_subject', 'subject_transactions',
                    ['subject_id', 'goods_category', 'transacted_at'])
    append_only('subject_transactions')

    op.create_table(
        'purpose_basis_changes',
        sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
        sa.Column('tenant_id', sa.Text(), nullable=False),
        sa.Column('purpose_id', sa.Uuid(), nullable=False),
        sa.Column('legal_basis_before', sa.Text(), nullable=False),
        sa.Column('category_before', sa.Text(), nullable=True),
        sa.Column('legal_basis', sa.Text(), nullable=False),
        sa.Column('category', sa.Text(), nullable=True),
        sa.Column('effective_from', postgresql.TIMESTAMP(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('changed_by', sa.Text(), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('created_at', postgresql.TIMESTAMP(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['purpose_id'], ['purposes.id'],
                                name=op.f('fk_purpose_basis_changes_purpose_id_purposes')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_purpose_basis_changes')),
    )
    op.create_index('ix_purpose_basis_changes_purpose', 'purpose_basis_changes', ['purpose_id', 'effective_from'])
    append_only('purpose_basis_changes')

    _check('consent_events', 'action', sql_in('action', ACTIONS_BEFORE + ("acknowledged",)))
    _check('consent_events', 'status', sql_in('status', STATUSES_BEFORE + ("acknowledged",)))
    _check('consent_events', 'method', sql_in('method', METHODS_BEFORE + ("agree_all",)))
    _check('consent_states', 'status', sql_in('status', STATUSES_BEFORE + ("acknowledged",)))

    grant_runtime()


def downgrade() -> None:
    for table, name, values in (('consent_events', 'action', ACTIONS_BEFORE),
                                ('consent_events', 'status', STATUSES_BEFORE),
                                ('consent_events', 'method', METHODS_BEFORE),
                                ('consent_states', 'status', STATUSES_BEFORE)):
        _check(table, name, sql_in(name, values))
    op.drop_table('purpose_basis_changes')
    op.drop_table('subject_transactions')
    op.drop_column('purposes', 'advertises')
    op.drop_column('webhook_endpoints', 'categories')
    op.drop_column('collection_point_purposes', 'condition_of_service')
    op.drop_constraint(op.f('ck_purposes_recipient_iff_provision'), 'purposes', type_='check')
    op.create_check_constraint(op.f('ck_purposes_recipient_iff_third_party'), 'purposes',
                               "(kind = 'third_party') = (recipient_id IS NOT NULL)")
    _check('purposes', 'kind', sql_in('kind', KINDS_BEFORE))
    for name in ('category_iff_consent', 'category', 'legal_basis'):
        op.drop_constraint(op.f(f"ck_purposes_{name}"), 'purposes', type_='check')
    op.drop_column('purposes', 'category')
    op.drop_column('purposes', 'legal_basis')
