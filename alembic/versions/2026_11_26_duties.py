"""duties: the lifecycle duties (docs/duties.md): duties, their hash-chained records, tenant settings

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 00:00:00+00:00

duty_records are appended by the runtime role and checked by a statement trigger (as events are):
each duty's records continue its chain (seq, prev_hash; the first links to the causing event's
hash), the status moves only along the allowed transitions, and the trigger then moves `duties`
and queues each record for the tenant's Merkle log, as the owner. Duties are locked only through
ledger_lock_duties / ledger_claim_duties (SECURITY DEFINER; the runtime role has no UPDATE).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from app.core.migrating import append_only, grant_runtime
from app.core.models import sql_in
from app.duties.models import ACTIONS, KINDS, STATUSES

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

TRANSITIONS = """
CASE a.action
    WHEN 'notified' THEN d.status IN ('due', 'overdue') AND a.status = d.status
    WHEN 'overdue' THEN d.status = 'due' AND a.status = 'overdue'
    WHEN 'sent' THEN d.status IN ('due', 'overdue') AND a.status = 'sent'
    WHEN 'done' THEN d.status IN ('due', 'overdue', 'sent') AND a.status = 'done'
    WHEN 'cancelled' THEN d.status IN ('due', 'overdue', 'sent') AND a.status = 'cancelled'
    ELSE false
END"""

FUNCTIONS = [
    f"""
    CREATE FUNCTION ledger_duty_records_appended() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    -- The transition table has no statistics: a hash or merge join would read all of duties (or
    -- subjects) for every batch (measured: ~1 s per 2,000 records at 5M duties); by key, per row.
    SET enable_hashjoin = off SET enable_mergejoin = off AS $$
    DECLARE
        moved bigint;
        expected bigint;
    BEGIN
        IF EXISTS (SELECT 1 FROM appended a WHERE a.record_version <> 1 OR a.seal IS NULL) THEN
            RAISE EXCEPTION 'duty records are appended in record version 1, sealed' USING ERRCODE = 'check_violation';
        END IF;
        IF EXISTS (SELECT 1 FROM appended a GROUP BY a.duty_id HAVING count(*) > 1) THEN
            RAISE EXCEPTION 'one record per duty in a statement' USING ERRCODE = 'check_violation';
        END IF;
        IF EXISTS (SELECT 1 FROM appended a LEFT JOIN subjects s ON s.id = a.subject_id
                   WHERE s.id IS NULL OR s.tenant_id <> a.tenant_id) THEN
            RAISE EXCEPTION 'a duty record names a subject of another tenant' USING ERRCODE = 'check_violation';
        END IF;
        IF EXISTS (SELECT 1 FROM appended a WHERE a.recorded_at > clock_timestamp() + interval '1 minute') THEN
            RAISE EXCEPTION 'a duty record is recorded in the future' USING ERRCODE = 'check_violation';
        END IF;
        -- a duty opens with 'created'; when an event caused it, its first record links to that event
        IF EXISTS (SELECT 1 FROM appended a WHERE a.seq = 1 AND (
                       a.action <> 'created' OR a.status <> 'due'
                       OR (a.cause_event_id IS NULL AND a.prev_hash IS NOT NULL)
                       OR (a.cause_event_id IS NOT NULL AND NOT EXISTS (
                           SELECT 1 FROM consent_events e WHERE e.id = a.cause_event_id
                              AND e.subject_id = a.subject_id AND e.hash = a.prev_hash)))) THEN
            RAISE EXCEPTION 'a duty opens with a created record linked to the event that caused it'
                USING ERRCODE = 'check_violation';
        END IF;
        INSERT INTO duties (id, tenant_id, subject_id, kind, purpose_key, processor_key, notify_at, due_at, status,
                            contents, cause_event_id, last_seq, last_hash, created_at, updated_at)
        SELECT a.duty_id, a.tenant_id, a.subject_id, a.kind, a.purpose_key, a.processor_key, a.notify_at, a.due_at,
               'due', a.detail, a.cause_event_id, 1, a.hash, a.recorded_at, a.recorded_at
        FROM appended a WHERE a.seq = 1;
        WITH m AS (
            UPDATE duties d SET status = a.status, last_seq = a.seq, last_hash = a.hash, updated_at = a.recorded_at,
                   notified_at = CASE WHEN a.action IN ('notified', 'overdue') THEN a.recorded_at
                                      ELSE d.notified_at END,
                   -- the first fulfilment stays the duty's (a later cancel does not rewrite when it was met)
                   fulfilment = CASE WHEN a.action IN ('sent', 'done', 'cancelled')
                                     THEN coalesce(d.fulfilment, a.detail) ELSE d.fulfilment END,
                   closed_at = CASE WHEN a.action IN ('sent', 'done', 'cancelled')
                                    THEN coalesce(d.closed_at, a.recorded_at) ELSE d.closed_at END
            FROM appended a
            WHERE a.seq > 1 AND d.id = a.duty_id AND d.last_seq = a.seq - 1 AND d.last_hash = a.prev_hash
              AND d.tenant_id = a.tenant_id AND d.subject_id = a.subject_id AND d.kind = a.kind
              AND d.purpose_key IS NOT DISTINCT FROM a.purpose_key
              AND d.processor_key IS NOT DISTINCT FROM a.processor_key
              AND d.due_at = a.due_at AND d.notify_at = a.notify_at AND a.cause_event_id IS NULL
              AND a.recorded_at >= d.updated_at AND {TRANSITIONS}
            RETURNING 1
        )
        SELECT count(*) INTO moved FROM m;
        SELECT count(*) INTO expected FROM appended a WHERE a.seq > 1;
        IF moved <> expected THEN
            RAISE EXCEPTION 'a duty record does not continue its duty (seq, link, duty or status transition)'
                USING ERRCODE = 'check_violation';
        END IF;
        INSERT INTO ledger_log_queue (event_id, tenant_id, subject_id, event_hash)
        SELECT a.id, a.tenant_id, a.subject_id, a.hash FROM appended a ORDER BY a.recorded_at, a.duty_id;
        RETURN NULL;
    END $$
    """,
    "CREATE TRIGGER duty_records_appended AFTER INSERT ON duty_records REFERENCING NEW TABLE AS appended"
    " FOR EACH STATEMENT EXECUTE FUNCTION ledger_duty_records_appended()",
    # Lock order (docs/duties.md): a subject (ledger_lock_subject) before its duties, duties by id.
    """
    CREATE FUNCTION ledger_lock_duties(p_tenant text, p_ids uuid[])
    RETURNS SETOF duties LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
        SELECT * FROM duties WHERE tenant_id = p_tenant AND id = ANY(p_ids) ORDER BY id FOR UPDATE
    $$
    """,
    """
    CREATE FUNCTION ledger_lock_open_duties(p_tenant text, p_subject uuid, p_kinds text[], p_purposes text[])
    RETURNS SETOF duties LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
        SELECT * FROM duties
        WHERE tenant_id = p_tenant AND subject_id = p_subject AND kind = ANY(p_kinds)
          AND purpose_key = ANY(p_purposes) AND status IN ('due', 'overdue')
        ORDER BY id FOR UPDATE
    $$
    """,
    # The scheduler's batches: duties to announce (come due) or to mark overdue; a duty a writer
    # holds is skipped this round, never waited for.
    """
    CREATE FUNCTION ledger_claim_duties(p_which text, p_limit integer)
    RETURNS SETOF duties LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    BEGIN
        IF p_which = 'notify' THEN
            RETURN QUERY SELECT * FROM duties d
                WHERE d.status = 'due' AND d.notified_at IS NULL AND d.notify_at <= now() AND d.due_at > now()
                ORDER BY d.notify_at LIMIT p_limit FOR UPDATE SKIP LOCKED;
        ELSIF p_which = 'overdue' THEN
            RETURN QUERY SELECT * FROM duties d WHERE d.status = 'due' AND d.due_at <= now()
                ORDER BY d.due_at LIMIT p_limit FOR UPDATE SKIP LOCKED;
        ELSE
            RAISE EXCEPTION 'unknown claim %', p_which USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END $$
    """,
]


def _ts(name: str, nullable: bool = False, default: bool = False) -> sa.Column:
    return sa.Column(name, postgresql.TIMESTAMP(timezone=True), nullable=nullable,
                     server_default=sa.text('now()') if default else None)


def upgrade() -> None:
    op.add_column('notices', sa.Column('impact', sa.Text(), server_default='minor', nullable=False))
    op.add_column('notices', sa.Column('forced_reason', sa.Text(), nullable=True))
    op.add_column('notices', sa.Column('forced_by', sa.Text(), nullable=True))
    op.create_table(
        'purpose_wording_changes',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('tenant_id', sa.Text(), nullable=False),
        sa.Column('purpose_id', sa.Uuid(), nullable=False),
        sa.Column('purpose_key', sa.Text(), nullable=False),
        sa.Column('disclosure_hash_before', sa.Text(), nullable=False),
        sa.Column('disclosure_hash_after', sa.Text(), nullable=False),
        sa.Column('material', sa.Boolean(), nullable=False),
        _ts('effective_from'),
        sa.Column('changed_by', sa.Text(), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        _ts('created_at'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_purpose_wording_changes')),
    )
    op.create_index('ix_purpose_wording_changes_purpose', 'purpose_wording_changes', ['purpose_id', 'created_at'])
    append_only('purpose_wording_changes')
    op.create_table(
        'reconsent_runs',
        sa.Column('change_id', sa.Uuid(), nullable=False),
        sa.Column('last_subject', sa.Uuid(), nullable=True),
        sa.Column('subjects', sa.Integer(), server_default='0', nullable=False),
        _ts('finished_at', nullable=True),
        sa.PrimaryKeyConstraint('change_id', name=op.f('pk_reconsent_runs')),
    )
    op.add_column('purposes', sa.Column('retention', postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.add_column('collection_points', sa.Column('for_children', sa.Boolean(), server_default=sa.text('false'),
                                                 nullable=False))
    op.create_table(
        'tenant_settings',
        sa.Column('tenant_id', sa.Text(), nullable=False),
        sa.Column('reconfirmation_lead_days', sa.Integer(), server_default='30', nullable=False),
        sa.Column('overdue_reconfirmation_denies', sa.Boolean(), server_default=sa.text('false'), nullable=False),
        sa.Column('withdrawal_instructions', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column('updated_by', sa.Text(), nullable=True),
        _ts('updated_at', default=True),
        sa.CheckConstraint('reconfirmation_lead_days BETWEEN 0 AND 365', name=op.f('ck_tenant_settings_lead_days')),
        sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_tenant_settings')),
    )
    op.create_table(
        'duties',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('tenant_id', sa.Text(), nullable=False),
        sa.Column('subject_id', sa.Uuid(), nullable=False),
        sa.Column('kind', sa.Text(), nullable=False),
        sa.Column('purpose_key', sa.Text(), nullable=True),
        sa.Column('processor_key', sa.Text(), nullable=True),
        _ts('notify_at'),
        _ts('due_at'),
        sa.Column('status', sa.Text(), nullable=False),
        sa.Column('contents', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('fulfilment', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column('cause_event_id', sa.Uuid(), nullable=True),
        sa.Column('last_seq', sa.Integer(), nullable=False),
        sa.Column('last_hash', sa.Text(), nullable=False),
        _ts('notified_at', nullable=True),
        _ts('closed_at', nullable=True),
        _ts('created_at'),
        _ts('updated_at'),
        sa.CheckConstraint(sql_in('kind', KINDS), name=op.f('ck_duties_kind')),
        sa.CheckConstraint(sql_in('status', STATUSES), name=op.f('ck_duties_status')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_duties')),
    )
    op.create_index('ix_duties_list', 'duties', ['tenant_id', 'status', 'kind', 'due_at', 'id'])
    op.create_index('ix_duties_tenant_due', 'duties', ['tenant_id', 'due_at', 'id'])
    op.create_index('ix_duties_subject', 'duties', ['subject_id', 'purpose_key'])
    op.create_index('ix_duties_processor', 'duties', ['tenant_id', 'processor_key', 'status'],
                    postgresql_where=sa.text('processor_key IS NOT NULL'))
    op.create_index('ix_duties_to_notify', 'duties', ['notify_at'],
                    postgresql_where=sa.text("status = 'due' AND notified_at IS NULL"))
    op.create_index('ix_duties_to_overdue', 'duties', ['due_at'], postgresql_where=sa.text("status = 'due'"))
    op.create_table(
        'duty_records',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('duty_id', sa.Uuid(), nullable=False),
        sa.Column('tenant_id', sa.Text(), nullable=False),
        sa.Column('subject_id', sa.Uuid(), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('kind', sa.Text(), nullable=False),
        sa.Column('purpose_key', sa.Text(), nullable=True),
        sa.Column('processor_key', sa.Text(), nullable=True),
        sa.Column('action', sa.Text(), nullable=False),
        sa.Column('status', sa.Text(), nullable=False),
        _ts('notify_at'),
        _ts('due_at'),
        sa.Column('detail', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('cause_event_id', sa.Uuid(), nullable=True),
        _ts('recorded_at'),
        sa.Column('record_version', sa.Integer(), nullable=False),
        sa.Column('prev_hash', sa.Text(), nullable=True),
        sa.Column('hash', sa.Text(), nullable=False),
        sa.Column('seal', sa.Text(), nullable=False),
        sa.CheckConstraint(sql_in('kind', KINDS), name=op.f('ck_duty_records_kind')),
        sa.CheckConstraint(sql_in('status', STATUSES), name=op.f('ck_duty_records_status')),
        sa.CheckConstraint(sql_in('action', ACTIONS), name=op.f('ck_duty_records_action')),
        sa.CheckConstraint("hash ~ '^[0-9a-f]{64}$' AND (prev_hash IS NULL OR prev_hash ~ '^[0-9a-f]{64}$')",
                           name=op.f('ck_duty_records_hash_shape')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_duty_records')),
        sa.UniqueConstraint('duty_id', 'seq', name=op.f('uq_duty_records_duty_id_seq')),
    )
    op.create_index('ix_duty_records_subject', 'duty_records', ['subject_id'])
    append_only('duty_records')
    for statement in FUNCTIONS:
        op.execute(statement)
    grant_runtime()


def downgrade() -> None:
    for function in ("ledger_claim_duties(text, integer)", "ledger_lock_open_duties(text, uuid, text[], text[])",
                     "ledger_lock_duties(text, uuid[])"):
        op.execute(f"DROP FUNCTION {function}")
    op.drop_table('duty_records')
    op.execute("DROP FUNCTION ledger_duty_records_appended()")
    op.drop_table('duties')
    op.drop_table('tenant_settings')
    op.drop_column('collection_points', 'for_children')
    op.drop_column('purposes', 'retention')
    op.drop_table('reconsent_runs')
    op.drop_table('purpose_wording_changes')
    for column in ('forced_by', 'forced_reason', 'impact'):
        op.drop_column('notices', column)
