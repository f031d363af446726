"""proof: chain version 2, erasable evidence, heads and states kept by the database, Merkle log,
checkpoints, receipts (docs/proof.md)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 00:00:00+00:00

The runtime role gets no UPDATE on subjects or consent_states: one statement trigger on
consent_events checks each appended batch against the subject's head (seq, prev_hash, time
order, tenant) and then moves the head, the state and the log queue itself, as the owner.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from app.core.migrating import append_only

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


FUNCTIONS = [
    # The writer's lock on a subject (created on first use), and the server time the events will
    # carry: never earlier than the subject's last event (time never runs backwards in a chain).
    """
    CREATE FUNCTION ledger_lock_subject(p_tenant text, p_external text, p_create boolean)
    RETURNS TABLE (id uuid, last_seq bigint, last_hash text, now timestamptz, created boolean)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    #variable_conflict use_column
    BEGIN
        IF p_create THEN
            RETURN QUERY
            INSERT INTO subjects AS s (id, tenant_id, external_id) VALUES (gen_random_uuid(), p_tenant, p_external)
            ON CONFLICT (tenant_id, external_id) DO UPDATE SET last_seq = s.last_seq
            RETURNING s.id, s.last_seq, s.last_hash,
                      greatest(clock_timestamp(), s.last_recorded_at), (s.xmax = 0);
        ELSE
            RETURN QUERY
            SELECT s.id, s.last_seq, s.last_hash, greatest(clock_timestamp(), s.last_recorded_at), false
            FROM subjects s WHERE s.tenant_id = p_tenant AND s.external_id = p_external FOR UPDATE;
        END IF;
    END $$
    """,
    """
    CREATE FUNCTION ledger_events_appended() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    DECLARE
        s record;
        e record;
        head record;
        next_seq bigint;
        prev text;
        last_time timestamptz;
    BEGIN
        IF EXISTS (SELECT 1 FROM appended a WHERE a.chain_version <> 2 OR a.seal IS NULL) THEN
            RAISE EXCEPTION 'events are appended in chain version 2, sealed' USING ERRCODE = 'check_violation';
        END IF;
        IF EXISTS (SELECT 1 FROM appended a JOIN purposes p ON p.id = a.purpose_id
                   WHERE p.tenant_id <> a.tenant_id OR p.key <> a.purpose_key) THEN
            RAISE EXCEPTION 'an event names a purpose of another tenant or under another key'
                USING ERRCODE = 'check_violation';
        END IF;
        FOR s IN SELECT DISTINCT a.subject_id FROM appended a ORDER BY a.subject_id LOOP
            SELECT sub.tenant_id, sub.last_seq, sub.last_hash, sub.last_recorded_at INTO head
            FROM subjects sub WHERE sub.id = s.subject_id FOR UPDATE;
            next_seq := head.last_seq;
            prev := head.last_hash;
            last_time := head.last_recorded_at;
            FOR e IN SELECT a.seq, a.prev_hash, a.hash, a.recorded_at, a.tenant_id
                     FROM appended a WHERE a.subject_id = s.subject_id ORDER BY a.seq LOOP
                next_seq := next_seq + 1;
                IF e.tenant_id <> head.tenant_id THEN
                    RAISE EXCEPTION 'event of subject % names another tenant', s.subject_id
                        USING ERRCODE = 'check_violation';
                END IF;
                IF e.seq <> next_seq OR e.prev_hash IS DISTINCT FROM prev THEN
                    RAISE EXCEPTION 'event seq % of subject % does not continue its chain (head: seq %)',
                        e.seq, s.subject_id, next_seq - 1 USING ERRCODE = 'check_violation';
                END IF;
                IF e.recorded_at > clock_timestamp() + interval '1 minute' THEN
                    RAISE EXCEPTION 'event seq % of subject % is recorded in the future', e.seq, s.subject_id
                        USING ERRCODE = 'check_violation';
                END IF;
                IF last_time IS NOT NULL AND e.recorded_at < last_time THEN
                    RAISE EXCEPTION 'event seq % of subject % is recorded before the previous event',
                        e.seq, s.subject_id USING ERRCODE = 'check_violation';
                END IF;
                prev := e.hash;
                last_time := e.recorded_at;
            END LOOP;
            UPDATE subjects SET last_seq = next_seq, last_hash = prev, last_recorded_at = last_time
            WHERE id = s.subject_id;
        END LOOP;
        INSERT INTO consent_states AS cs (subject_id, purpose_id, tenant_id, status, version, since,
                                          last_event_id, notice_id, collection_point_id)
        SELECT DISTINCT ON (a.subject_id, a.purpose_id) a.subject_id, a.purpose_id, a.tenant_id, a.status,
               a.version, a.recorded_at, a.id, a.notice_id, a.collection_point_id
        FROM appended a ORDER BY a.subject_id, a.purpose_id, a.seq DESC
        ON CONFLICT (subject_id, purpose_id) DO UPDATE SET
            status = EXCLUDED.status, version = EXCLUDED.version, since = EXCLUDED.since,
            last_event_id = EXCLUDED.last_event_id, notice_id = EXCLUDED.notice_id,
            collection_point_id = EXCLUDED.collection_point_id;
        INSERT INTO ledger_log_queue (event_id, tenant_id, subject_id, event_hash)
        SELECT a.id, a.tenant_id, a.subject_id, a.hash FROM appended a ORDER BY a.recorded_at, a.subject_id, a.seq;
        RETURN NULL;
    END $$
    """,
    "CREATE TRIGGER consent_events_appended AFTER INSERT ON consent_events REFERENCING NEW TABLE AS appended"
    " FOR EACH STATEMENT EXECUTE FUNCTION ledger_events_appended()",
    # The Merkle log's order is fixed here, once: queued events get the tenant's next indexes.
    """
    CREATE FUNCTION ledger_log_take(p_tenant text, p_limit integer)
    RETURNS TABLE (idx bigint, event_id uuid, event_hash text)
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
        SELECT pg_advisory_xact_lock(hashtextextended('consent-ledger log ' || p_tenant, 0));
        WITH base AS (
            SELECT coalesce(max(l.idx) + 1, 0) AS n FROM ledger_log l WHERE l.tenant_id = p_tenant
        ), taken AS (
            DELETE FROM ledger_log_queue q WHERE q.event_id IN (
                SELECT q2.event_id FROM ledger_log_queue q2 WHERE q2.tenant_id = p_tenant
                ORDER BY q2.position LIMIT p_limit)
            RETURNING q.position, q.event_id, q.subject_id, q.event_hash
        )
        INSERT INTO ledger_log (tenant_id, idx, event_id, subject_id, event_hash)
        SELECT p_tenant, base.n + row_number() OVER (ORDER BY taken.position) - 1, taken.event_id,
               taken.subject_id, taken.event_hash
        FROM taken, base
        RETURNING ledger_log.idx, ledger_log.event_id, ledger_log.event_hash;
    $$
    """,
    # Raw evidence past its retention: the raw values go, the commitment (and a record of the
    # purge) stays.
    """
    CREATE FUNCTION ledger_purge_evidence(p_before timestamptz, p_by text) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    DECLARE
        n bigint;
    BEGIN
        IF p_before > now() THEN
            RAISE EXCEPTION 'evidence can only be purged up to now' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        UPDATE consent_evidence SET ip = NULL, user_agent = NULL, guardian = NULL, purged_at = clock_timestamp()
        WHERE created_at < p_before AND purged_at IS NULL;
        GET DIAGNOSTICS n = ROW_COUNT;
        INSERT INTO evidence_purges (before, purged_count, purged_by) VALUES (p_before, n, p_by);
        RETURN n;
    END $$
    """,
    """
    CREATE FUNCTION ledger_evidence_only_purged() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND NEW.id = OLD.id AND NEW.tenant_id = OLD.tenant_id
           AND NEW.subject_id = OLD.subject_id AND NEW.commitment = OLD.commitment
           AND NEW.created_at = OLD.created_at AND OLD.purged_at IS NULL AND NEW.purged_at IS NOT NULL
           AND NEW.ip IS NULL AND NEW.user_agent IS NULL AND NEW.guardian IS NULL THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION '% on consent_evidence is not allowed: raw evidence is only ever purged', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END $$
    """,
    "CREATE TRIGGER consent_evidence_only_purged BEFORE UPDATE OR DELETE ON consent_evidence"
    " FOR EACH ROW EXECUTE FUNCTION ledger_evidence_only_purged()",
    "CREATE TRIGGER consent_evidence_no_truncate BEFORE TRUNCATE ON consent_evidence"
    " FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()",
]
APPEND_ONLY_TABLES = ("ledger_log", "ledger_log_nodes", "ledger_checkpoints", "receipts", "evidence_purges")


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable,
                     server_default=None if nullable else sa.text('now()'))


def upgrade() -> None:
    op.add_column('subjects', sa.Column('last_recorded_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        'consent_evidence',
        sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
        sa.Column('tenant_id', sa.Text(), nullable=False),
        sa.Column('subject_id', sa.UUID(), nullable=False),
        sa.Column('ip', sa.Text(), nullable=True),
        sa.Column('user_agent', sa.Text(), nullable=True),
        sa.Column('guardian', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column('commitment', sa.Text(), nullable=False),
        _timestamp('created_at'),
        _timestamp('purged_at', nullable=True),
        sa.ForeignKeyConstraint(['subject_id'], ['subjects.id'], name=op.f('fk_consent_evidence_subject_id_subjects')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_consent_evidence')),
    )
    op.create_index('ix_consent_evidence_subject', 'consent_evidence', ['subject_id'], unique=False)
    op.create_index('ix_consent_evidence_created', 'consent_evidence', ['created_at'], unique=False,
                    postgresql_using='brin')
    for column in (
        sa.Column('chain_version', sa.SmallInteger(), server_default='1', nullable=False),
        sa.Column('purpose_key', sa.Text(), nullable=True),
        sa.Column('collection_point_key', sa.Text(), nullable=True),
        sa.Column('notice_key', sa.Text(), nullable=True),
        sa.Column('notice_version', sa.Text(), nullable=True),
        sa.Column('notice_sha256', sa.Text(), nullable=True),
        sa.Column('notice_superseded_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('evidence_id', sa.UUID(), nullable=True),
        sa.Column('evidence_commitment', sa.Text(), nullable=True),
        sa.Column('seal', sa.Text(), nullable=True),
    ):
        op.add_column('consent_events', column)
    op.create_foreign_key(op.f('fk_consent_events_evidence_id_consent_evidence'), 'consent_events',
                          'consent_evidence', ['evidence_id'], ['id'])
    op.create_check_constraint(op.f('ck_consent_events_chain_version'), 'consent_events', 'chain_version IN (1, 2)')
    op.drop_constraint(op.f('ck_consent_events_guardian_evidence'), 'consent_events', type_='check')
    op.create_check_constraint(op.f('ck_consent_events_guardian_evidence'), 'consent_events',
                               "actor_type <> 'guardian' OR guardian IS NOT NULL OR evidence_id IS NOT NULL")
    # Version 1 rows name their purpose by id only; the key is filled in so every row reads alike
    # (the v1 hash covers the ids, not these copies: docs/proof.md).
    op.execute("ALTER TABLE consent_events DISABLE TRIGGER consent_events_append_only")
    op.execute("""UPDATE consent_events e SET purpose_key = p.key, collection_point_key = cp.key, notice_key = n.key,
                         notice_version = n.version, notice_sha256 = n.sha256
                  FROM purposes p, consent_events e2
                  LEFT JOIN collection_points cp ON cp.id = e2.collection_point_id
                  LEFT JOIN notices n ON n.id = e2.notice_id
                  WHERE e2.id = e.id AND p.id = e.purpose_id""")
    op.execute("ALTER TABLE consent_events ENABLE TRIGGER consent_events_append_only")
    op.alter_column('consent_events', 'purpose_key', nullable=False)
    op.execute("""UPDATE subjects s SET last_recorded_at = m.t
                  FROM (SELECT subject_id, max(recorded_at) AS t FROM consent_events GROUP BY subject_id) m
                  WHERE m.subject_id = s.id""")

    op.create_table(
        'ledger_log_queue',
        sa.Column('position', sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column('event_id', sa.UUID(), nullable=False),
        sa.Column('tenant_id', sa.Text(), nullable=False),
        sa.Column('subject_id', sa.UUID(), nullable=False),
        sa.Column('event_hash', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('event_id', name=op.f('pk_ledger_log_queue')),
    )
    op.create_index('ix_ledger_log_queue_tenant_position', 'ledger_log_queue', ['tenant_id', 'position'])
    op.create_index('ix_ledger_log_queue_subject', 'ledger_log_queue', ['subject_id'])
    op.create_table(
        'ledger_log',
        sa.Column('tenant_id', sa.Text(), nullable=False),
        sa.Column('idx', sa.BigInteger(), nullable=False),
        sa.Column('event_id', sa.UUID(), nullable=False),
        sa.Column('subject_id', sa.UUID(), nullable=False),
        sa.Column('event_hash', sa.Text(), nullable=False),
        sa.Column('logged_at', sa.DateTime(timezone=True), server_default=sa.text('clock_timestamp()'),
                  nullable=False),
        sa.PrimaryKeyConstraint('tenant_id', 'idx', name=op.f('pk_ledger_log')),
        sa.UniqueConstraint('event_id', name=op.f('uq_ledger_log_event_id')),
    )
    # verify: every event the log holds for a subject must still be in the ledger
    op.create_index('ix_ledger_log_subject', 'ledger_log', ['subject_id'], unique=False)
    op.create_table(
        'ledger_log_nodes',
        sa.Column('tenant_id', sa.Text(), nullable=False),
        sa.Column('level', sa.SmallInteger(), nullable=False),
        sa.Column('idx', sa.BigInteger(), nullable=False),
        sa.Column('hash', sa.LargeBinary(), nullable=False),
        sa.CheckConstraint('level >= 1', name=op.f('ck_ledger_log_nodes_above_leaves')),
        sa.PrimaryKeyConstraint('tenant_id', 'level', 'idx', name=op.f('pk_ledger_log_nodes')),
    )
    op.create_table(
        'ledger_checkpoints',
        sa.Column('tenant_id', sa.Text(), nullable=False),
        sa.Column('tree_size', sa.BigInteger(), nullable=False),
        sa.Column('root_hash', sa.Text(), nullable=False),
        _timestamp('issued_at'),
        sa.Column('key_id', sa.Text(), nullable=False),
        sa.Column('jws', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('tenant_id', 'tree_size', name=op.f('pk_ledger_checkpoints')),
    )
    op.create_table(
        'receipts',
        sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
        sa.Column('tenant_id', sa.Text(), nullable=False),
        sa.Column('subject_id', sa.UUID(), nullable=False),
        sa.Column('request_id', sa.UUID(), nullable=False),
        sa.Column('event_ids', postgresql.ARRAY(sa.UUID()), nullable=False),
        sa.Column('jws', sa.Text(), nullable=False),
        _timestamp('created_at'),
        sa.ForeignKeyConstraint(['subject_id'], ['subjects.id'], name=op.f('fk_receipts_subject_id_subjects')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_receipts')),
    )
    op.create_index('ix_receipts_subject', 'receipts', ['subject_id'], unique=False)
    op.create_table(
        'evidence_purges',
        sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
        sa.Column('before', sa.DateTime(timezone=True), nullable=False),
        sa.Column('purged_count', sa.BigInteger(), nullable=False),
        sa.Column('purged_by', sa.Text(), nullable=False),
        _timestamp('purged_at'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_evidence_purges')),
    )
    # Shapes the code relies on, enforced where the runtime role writes: a tenant id becomes a
    # directory name (CHECKPOINT_DIR) and a hash a Merkle leaf. NOT VALID: rows from before are
    # left as they are (the application always made them so).
    op.execute(r"ALTER TABLE tenants ADD CONSTRAINT ck_tenants_key_shape "
               r"CHECK (id ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$') NOT VALID")
    op.execute(r"ALTER TABLE consent_events ADD CONSTRAINT ck_consent_events_hash_shape "
               r"CHECK (hash ~ '^[0-9a-f]{64}$' AND (prev_hash IS NULL OR prev_hash ~ '^[0-9a-f]{64}$')) NOT VALID")
    for statement in FUNCTIONS:
        op.execute(statement)
    for table in APPEND_ONLY_TABLES:
        append_only(table)
    # Everything recorded before this revision enters the log first, in the order it was recorded.
    op.execute("""INSERT INTO ledger_log_queue (event_id, tenant_id, subject_id, event_hash)
                  SELECT id, tenant_id, subject_id, hash FROM consent_events ORDER BY recorded_at, subject_id, seq""")


def downgrade() -> None:
    op.execute("ALTER TABLE consent_events DROP CONSTRAINT ck_consent_events_hash_shape")
    op.execute("ALTER TABLE tenants DROP CONSTRAINT ck_tenants_key_shape")
    for table in APPEND_ONLY_TABLES:
        op.execute(f"DROP TRIGGER {table}_no_truncate ON {table}")
        op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
    op.execute("DROP TRIGGER consent_evidence_no_truncate ON consent_evidence")
    op.execute("DROP TRIGGER consent_evidence_only_purged ON consent_evidence")
    op.execute("DROP TRIGGER consent_events_appended ON consent_events")
    for function in ("ledger_evidence_only_purged()", "ledger_purge_evidence(timestamptz, text)",
                     "ledger_log_take(text, integer)", "ledger_events_appended()",
                     "ledger_lock_subject(text, text, boolean)"):
        op.execute(f"DROP FUNCTION {function}")
    op.drop_table('evidence_purges')
    op.drop_index('ix_receipts_subject', table_name='receipts')
    op.drop_table('receipts')
    op.drop_table('ledger_checkpoints')
    op.drop_table('ledger_log_nodes')
    op.drop_index('ix_ledger_log_subject', table_name='ledger_log')
    op.drop_table('ledger_log')
    op.drop_index('ix_ledger_log_queue_subject', table_name='ledger_log_queue')
    op.drop_index('ix_ledger_log_queue_tenant_position', table_name='ledger_log_queue')
    op.drop_table('ledger_log_queue')
    op.drop_constraint(op.f('ck_consent_events_guardian_evidence'), 'consent_events', type_='check')
    op.create_check_constraint(op.f('ck_consent_events_guardian_evidence'), 'consent_events',
                               "actor_type <> 'guardian' OR guardian IS NOT NULL")
    op.drop_constraint(op.f('ck_consent_events_chain_version'), 'consent_events', type_='check')
    op.drop_constraint(op.f('fk_consent_events_evidence_id_consent_evidence'), 'consent_events', type_='foreignkey')
    for column in ('seal', 'evidence_commitment', 'evidence_id', 'notice_superseded_at', 'notice_sha256',
                   'notice_version', 'notice_key', 'collection_point_key', 'purpose_key', 'chain_version'):
        op.drop_column('consent_events', column)
    op.drop_index('ix_consent_evidence_created', table_name='consent_evidence', postgresql_using='brin')
    op.drop_index('ix_consent_evidence_subject', table_name='consent_evidence')
    op.drop_table('consent_evidence')
    op.drop_column('subjects', 'last_recorded_at')
