"""catalog history: every change to the catalog, notices, webhook endpoints and tenant settings

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 00:00:00+00:00

A row trigger (SECURITY DEFINER) on each table writes `catalog_changes` (append-only): the row
before and after, who (the transaction's `consent_ledger.actor` setting, else
`db:<role> (<application_name>)`), when.
Capturing it in the database rather than in each service function means nothing escapes it: a new
route, the worker, a DBA's UPDATE in psql. The form as it was at T (app/catalog/history.py) is
read back from it. Webhook secrets (and URL queries) are kept only as their SHA-256; delivery
bookkeeping (failing_since) and an update that changes nothing but updated_at are not changes.

The rows that exist when this runs get one `baseline` change each, at the time from which the row
is known to be as it is now: its creation when it was never updated, else its last update (a
collection point's presented purposes: the point's last update, which every change of them moves).
Before a baseline the history says nothing (docs/audit.md).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from app.core.migrating import append_only, grant_runtime

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

TRACKED = ('tenants', 'tenant_settings', 'recipients', 'processors', 'purposes', 'notices', 'collection_points',
           'collection_point_purposes', 'webhook_endpoints')

FUNCTIONS = [
    # A row as the history keeps it: a webhook endpoint's secrets only as their SHA-256 (a rotation
    # shows; the secret does not), the query of its URL likewise (it may carry a receiver's token),
    # its delivery bookkeeping (failing_since) not at all.
    """
    CREATE FUNCTION ledger_catalog_row(entity text, r jsonb) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE SET search_path = public, pg_temp AS $$
    DECLARE
        name text;
    BEGIN
        IF entity <> 'webhook_endpoints' OR r IS NULL THEN
            RETURN r;
        END IF;
        r := r - 'failing_since';
        FOREACH name IN ARRAY ARRAY['secret', 'previous_secret'] LOOP
            IF r->>name IS NOT NULL AND r->>name <> '' THEN
                r := jsonb_set(r, ARRAY[name], to_jsonb('sha256:' || encode(sha256(convert_to(r->>name, 'UTF8')), 'hex')));
            END IF;
        END LOOP;
        IF position('?' IN r->>'url') > 0 THEN
            r := jsonb_set(r, '{url}', to_jsonb(split_part(r->>'url', '?', 1) || '?sha256:' || encode(sha256(
                convert_to(substring(r->>'url' FROM position('?' IN r->>'url') + 1), 'UTF8')), 'hex')));
        END IF;
        RETURN r;
    END
    $$
    """,
    # Where a row lives in the history: tenant, identity in its table, key (a presented purpose: its
    # collection point's key, from the point, or from the point's last change when deleted with it).
    """
    CREATE FUNCTION ledger_catalog_place(entity text, r jsonb, OUT tenant text, OUT entity_id text, OUT key text)
    LANGUAGE plpgsql STABLE SET search_path = public, pg_temp AS $$
    BEGIN
        tenant := coalesce(r->>'tenant_id', CASE WHEN entity = 'tenants' THEN r->>'id' END);
        key := r->>'key';
        entity_id := CASE entity
            WHEN 'tenant_settings' THEN r->>'tenant_id'
            WHEN 'collection_point_purposes' THEN (r->>'collection_point_id') || '/' || (r->>'purpose_id')
            ELSE r->>'id' END;
        IF entity = 'collection_point_purposes' THEN
            SELECT p.tenant_id, p.key INTO tenant, key
            FROM collection_points p WHERE p.id = (r->>'collection_point_id')::uuid;
            IF tenant IS NULL THEN
                SELECT c.tenant_id, c.key INTO tenant, key FROM catalog_changes c
                WHERE c.entity = 'collection_points' AND c.entity_id = r->>'collection_point_id'
                ORDER BY c.id DESC LIMIT 1;
            END IF;
        END IF;
    END
    $$
    """,
    # changed_at: when the statement ran (clock_timestamp(), not the transaction's start: a
    # transaction held open must not date its change back); transaction_at: when its transaction began.
    """
    CREATE FUNCTION ledger_catalog_changed() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET timezone = 'UTC' AS $$
    DECLARE
        before jsonb;
        after jsonb;
        was record;
        now_at record;
        actor text := coalesce(nullif(current_setting('consent_ledger.actor', true), ''), 'db:' || session_user
                               || coalesce(' (' || nullif(current_setting('application_name'), '') || ')', ''));
    BEGIN
        IF TG_OP <> 'INSERT' THEN before := ledger_catalog_row(TG_TABLE_NAME, to_jsonb(OLD)); END IF;
        IF TG_OP <> 'DELETE' THEN after := ledger_catalog_row(TG_TABLE_NAME, to_jsonb(NEW)); END IF;
        IF TG_OP = 'UPDATE' AND before - 'updated_at' = after - 'updated_at' THEN
            RETURN NULL;
        END IF;
        SELECT * INTO was FROM ledger_catalog_place(TG_TABLE_NAME, before);
        SELECT * INTO now_at FROM ledger_catalog_place(TG_TABLE_NAME, after);
        IF TG_OP = 'UPDATE' AND (was.tenant, was.entity_id, was.key) IS DISTINCT FROM
                                (now_at.tenant, now_at.entity_id, now_at.key) THEN
            -- moved (another key, tenant or identity): gone from its old place, new in the other
            INSERT INTO catalog_changes (tenant_id, entity, entity_id, key, op, before, after, changed_by, db_role,
                                         changed_at, transaction_at)
            VALUES (was.tenant, TG_TABLE_NAME, was.entity_id, was.key, 'delete', before, NULL, actor, session_user,
                    clock_timestamp(), now()),
                   (now_at.tenant, TG_TABLE_NAME, now_at.entity_id, now_at.key, 'insert', NULL, after, actor,
                    session_user, clock_timestamp(), now());
            RETURN NULL;
        END IF;
        IF TG_OP = 'DELETE' THEN now_at := was; END IF;
        INSERT INTO catalog_changes (tenant_id, entity, entity_id, key, op, before, after, changed_by, db_role,
                                     changed_at, transaction_at)
        VALUES (now_at.tenant, TG_TABLE_NAME, now_at.entity_id, now_at.key, lower(TG_OP), before, after, actor,
                session_user, clock_timestamp(), now());
        RETURN NULL;
    END
    $$
    """,
]

# Baselines: (table, SQL giving tenant, entity_id, key, row, since)
BASELINES = {
    'tenants': "SELECT t.id, t.id, NULL, to_jsonb(t), t.created_at FROM tenants t",
    'tenant_settings': "SELECT s.tenant_id, s.tenant_id, NULL, to_jsonb(s), s.updated_at FROM tenant_settings s",
    'recipients': "SELECT x.tenant_id, x.id::text, x.key, to_jsonb(x), x.updated_at FROM recipients x",
    'processors': "SELECT x.tenant_id, x.id::text, x.key, to_jsonb(x), x.updated_at FROM processors x",
    'purposes': "SELECT x.tenant_id, x.id::text, x.key, to_jsonb(x), x.updated_at FROM purposes x",
    'notices': "SELECT x.tenant_id, x.id::text, x.key, to_jsonb(x), coalesce(x.published_at, x.created_at) "
               "FROM notices x",
    'collection_points': "SELECT x.tenant_id, x.id::text, x.key, to_jsonb(x), x.updated_at FROM collection_points x",
    'collection_point_purposes': (
        "SELECT p.tenant_id, x.collection_point_id || '/' || x.purpose_id, p.key, to_jsonb(x), p.updated_at "
        "FROM collection_point_purposes x JOIN collection_points p ON p.id = x.collection_point_id"),
    'webhook_endpoints': ("SELECT x.tenant_id, x.id::text, NULL, ledger_catalog_row('webhook_endpoints', to_jsonb(x)), "
                          "x.updated_at FROM webhook_endpoints x"),
}


def upgrade() -> None:
    # No catalog write between the baselines and the triggers (a replica still serving during a
    # rolling migration waits for this transaction); times written in UTC whatever the server's zone.
    op.execute(f"LOCK TABLE {', '.join(TRACKED)} IN SHARE ROW EXCLUSIVE MODE")
    op.execute("SET LOCAL timezone = 'UTC'")
    op.create_table(
        'catalog_changes',
        sa.Column('id', sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column('tenant_id', sa.Text(), nullable=True),
        sa.Column('entity', sa.Text(), nullable=False),
        sa.Column('entity_id', sa.Text(), nullable=False),
        sa.Column('key', sa.Text(), nullable=True),
        sa.Column('op', sa.Text(), nullable=False),
        sa.Column('before', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column('after', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column('changed_by', sa.Text(), nullable=False),
        sa.Column('db_role', sa.Text(), nullable=False),
        sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('transaction_at', sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("op IN ('baseline', 'insert', 'update', 'delete')", name=op.f('ck_catalog_changes_op')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_catalog_changes')),
    )
    op.create_index('ix_catalog_changes_tenant_changed', 'catalog_changes', ['tenant_id', 'changed_at', 'id'])
    op.create_index('ix_catalog_changes_entity', 'catalog_changes', ['entity', 'entity_id', 'changed_at', 'id'])
    op.create_index('ix_catalog_changes_key', 'catalog_changes', ['tenant_id', 'entity', 'key', 'changed_at'])
    for statement in FUNCTIONS:
        op.execute(statement)
    for function in ('ledger_catalog_row(text, jsonb)', 'ledger_catalog_place(text, jsonb)',
                     'ledger_catalog_changed()'):
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
    for table, select in BASELINES.items():
        op.execute(f"""
            INSERT INTO catalog_changes (tenant_id, entity, entity_id, key, op, after, changed_by, db_role, changed_at)
            SELECT b.tenant, '{table}', b.entity_id, b.key, 'baseline', b.row, 'migration 0009', session_user, b.since
            FROM ({select}) AS b(tenant, entity_id, key, row, since)""")
    # Where each existing tenant's history starts: before it, only the rows' present state is known.
    op.execute("""
        INSERT INTO catalog_changes (tenant_id, entity, entity_id, op, changed_by, db_role, changed_at)
        SELECT t.id, 'history', t.id, 'baseline', 'migration 0009', session_user, now() FROM tenants t""")
    append_only('catalog_changes')
    for table in TRACKED:
        op.execute(f"CREATE TRIGGER {table}_catalog_changes AFTER INSERT OR UPDATE OR DELETE ON {table}"
                   " FOR EACH ROW EXECUTE FUNCTION ledger_catalog_changed()")
    grant_runtime()


def downgrade() -> None:
    # The history is evidence of who changed the catalog: never dropped while it holds more than
    # what the upgrade itself wrote.
    op.execute("""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM catalog_changes WHERE op <> 'baseline') THEN
                RAISE EXCEPTION 'catalog_changes holds the catalog''s history since revision 0009: export it '
                                '(GET /v1/audit/changes, or the audit bundle) and drop it by hand to downgrade'
                      USING ERRCODE = 'object_in_use';
            END IF;
        END
        $$""")
    for table in TRACKED:
        op.execute(f"DROP TRIGGER {table}_catalog_changes ON {table}")
    op.execute("DROP FUNCTION ledger_catalog_changed()")
    op.execute("DROP FUNCTION ledger_catalog_place(text, jsonb)")
    op.execute("DROP FUNCTION ledger_catalog_row(text, jsonb)")
    op.drop_table('catalog_changes')
