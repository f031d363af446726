"""catalog history: every change to the catalog, notices, webhook endpoints and tenant settings

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 00:00:00+00:00

A row trigger (SECURITY DEFINER) on each table writes `catalog_changes` (append-only): the row
before and after, who (the transaction's `consent_ledger.actor` setting, else `db:<role> (<application_name>)`), when.
Capturing it in the database rather than in each service function means nothing escapes it: a new
route, the worker, a DBA's UPDATE in psql. The form as it was at T (app/catalog/history.py) is
read back from it. Webhook secrets are never copied; delivery bookkeeping (failing_since) and an
update that changes nothing but updated_at are not changes.

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

# table -> the columns never copied into the history
TRACKED = {
    'tenants': (), 'tenant_settings': (), 'recipients': (), 'processors': (), 'purposes': (), 'notices': (),
    'collection_points': (), 'collection_point_purposes': (),
    'webhook_endpoints': ('secret', 'previous_secret', 'failing_since'),
}

FUNCTION = """
CREATE FUNCTION ledger_catalog_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    hidden text[] := coalesce(TG_ARGV, '{}');
    before jsonb;
    after jsonb;
    r jsonb;
    tenant text;
    entity_key text;
    entity_id text;
BEGIN
    IF TG_OP <> 'INSERT' THEN before := to_jsonb(OLD) - hidden; END IF;
    IF TG_OP <> 'DELETE' THEN after := to_jsonb(NEW) - hidden; END IF;
    IF TG_OP = 'UPDATE' AND before - 'updated_at' = after - 'updated_at' THEN
        RETURN NULL;
    END IF;
    r := coalesce(after, before);
    tenant := coalesce(r->>'tenant_id', CASE WHEN TG_TABLE_NAME = 'tenants' THEN r->>'id' END);
    entity_key := r->>'key';
    IF TG_TABLE_NAME = 'collection_point_purposes' THEN
        -- the point's own row, or (deleted with it, by cascade) its last change
        SELECT p.tenant_id, p.key INTO tenant, entity_key
        FROM collection_points p WHERE p.id = (r->>'collection_point_id')::uuid;
        IF tenant IS NULL THEN
            SELECT c.tenant_id, c.key INTO tenant, entity_key FROM catalog_changes c
            WHERE c.entity = 'collection_points' AND c.entity_id = r->>'collection_point_id'
            ORDER BY c.id DESC LIMIT 1;
        END IF;
    END IF;
    entity_id := CASE TG_TABLE_NAME
        WHEN 'tenant_settings' THEN r->>'tenant_id'
        WHEN 'collection_point_purposes' THEN (r->>'collection_point_id') || '/' || (r->>'purpose_id')
        ELSE r->>'id' END;
    INSERT INTO catalog_changes (tenant_id, entity, entity_id, key, op, before, after, changed_by, db_role, changed_at)
    VALUES (tenant, TG_TABLE_NAME, entity_id, entity_key, lower(TG_OP), before, after,
            coalesce(nullif(current_setting('consent_ledger.actor', true), ''),
                     'db:' || session_user || coalesce(' (' || nullif(current_setting('application_name'), '') || ')', '')),
            session_user, now());
    RETURN NULL;
END
$$
"""

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
    'webhook_endpoints': ("SELECT x.tenant_id, x.id::text, NULL, to_jsonb(x) - 'secret' - 'previous_secret' "
                          "- 'failing_since', x.updated_at FROM webhook_endpoints x"),
}


def upgrade() -> None:
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
        sa.CheckConstraint("op IN ('baseline', 'insert', 'update', 'delete')", name=op.f('ck_catalog_changes_op')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_catalog_changes')),
    )
    op.create_index('ix_catalog_changes_tenant_changed', 'catalog_changes', ['tenant_id', 'changed_at', 'id'])
    op.create_index('ix_catalog_changes_entity', 'catalog_changes', ['entity', 'entity_id', 'changed_at', 'id'])
    op.create_index('ix_catalog_changes_key', 'catalog_changes', ['tenant_id', 'entity', 'key', 'changed_at'])
    for table, select in BASELINES.items():
        op.execute(f"""
            INSERT INTO catalog_changes (tenant_id, entity, entity_id, key, op, after, changed_by, db_role, changed_at)
            SELECT b.tenant, '{table}', b.entity_id, b.key, 'baseline', b.row, 'migration 0009', session_user, b.since
            FROM ({select}) AS b(tenant, entity_id, key, row, since)""")
    append_only('catalog_changes')
    op.execute(FUNCTION)
    op.execute("REVOKE ALL ON FUNCTION ledger_catalog_changed() FROM PUBLIC")
    for table, hidden in TRACKED.items():
        arguments = ", ".join(f"'{column}'" for column in hidden)
        op.execute(f"CREATE TRIGGER {table}_catalog_changes AFTER INSERT OR UPDATE OR DELETE ON {table}"
                   f" FOR EACH ROW EXECUTE FUNCTION ledger_catalog_changed({arguments})")
    grant_runtime()


def downgrade() -> None:
    for table in TRACKED:
        op.execute(f"DROP TRIGGER {table}_catalog_changes ON {table}")
    op.execute("DROP FUNCTION ledger_catalog_changed()")
    op.drop_table('catalog_changes')
