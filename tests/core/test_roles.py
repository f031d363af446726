"""Least privilege: logged in as the runtime role (what the API and the worker run as), every way of
rewriting history, hiding it, or escaping the grants is refused by PostgreSQL itself.

Tests marked `proof` touch tables and functions of revision 0004 (evidence, the Merkle log, receipts).
"""

from __future__ import annotations

import asyncio
import stat

import asyncpg
import pytest

from app.core import roles
from app.core.embedded_pg import EmbeddedPostgres, free_port

REFUSED = [
    # history is append-only for the runtime role, and the triggers are out of its reach
    ("update-events", "UPDATE consent_events SET status = status"),
    ("delete-events", "DELETE FROM consent_events"),
    ("truncate-events", "TRUNCATE consent_events"),
    # chain heads move only by trigger
    ("update-subject-external-id", "UPDATE subjects SET external_id = external_id"),
    ("update-subject-last-seq", "UPDATE subjects SET last_seq = last_seq + 1"),
    ("update-subject-last-hash", "UPDATE subjects SET last_hash = 'x'"),
    ("delete-subjects", "DELETE FROM subjects"),
    # states are derived by trigger only
    ("update-states", "UPDATE consent_states SET status = status"),
    ("insert-states", "INSERT INTO consent_states SELECT * FROM consent_states LIMIT 0"),
    ("delete-states", "DELETE FROM consent_states"),
    # no switching triggers off, no dropping or adding objects
    ("replication-role", "SET session_replication_role = replica"),
    ("disable-triggers", "ALTER TABLE consent_events DISABLE TRIGGER ALL"),
    ("drop-table", "DROP TABLE consent_events"),
    ("create-trigger", ("CREATE TRIGGER rogue BEFORE INSERT ON consent_events FOR EACH ROW "
                        "EXECUTE FUNCTION ledger_refuse_change()")),
    ("create-table", "CREATE TABLE public.rogue (i int)"),
    ("alter-role-superuser", f"ALTER ROLE {roles.RUNTIME_ROLE} SUPERUSER"),
    ("alter-role-createrole", f"ALTER ROLE {roles.RUNTIME_ROLE} CREATEROLE"),
    ("grant-owner", f"GRANT {roles.OWNER_ROLE} TO {roles.RUNTIME_ROLE}"),
    ("set-role-owner", f"SET ROLE {roles.OWNER_ROLE}"),
]

REFUSED_PROOF = [
    ("update-evidence", "UPDATE consent_evidence SET id = id"),
    ("delete-evidence", "DELETE FROM consent_evidence"),
    ("delete-log", "DELETE FROM ledger_log"),
    ("insert-log", "INSERT INTO ledger_log SELECT * FROM ledger_log LIMIT 0"),
    ("delete-log-queue", "DELETE FROM ledger_log_queue"),
    ("delete-log-nodes", "DELETE FROM ledger_log_nodes"),
    ("update-log-nodes", "UPDATE ledger_log_nodes SET hash = hash"),
    ("delete-checkpoints", "DELETE FROM ledger_checkpoints"),
    ("delete-receipts", "DELETE FROM receipts"),
    ("insert-evidence-purges", "INSERT INTO evidence_purges SELECT * FROM evidence_purges LIMIT 0"),
]


@pytest.mark.parametrize("sql", [sql for _, sql in REFUSED], ids=[name for name, _ in REFUSED])
async def test_the_runtime_role_is_refused(runtime_db, sql):
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await runtime_db.execute(sql)


@pytest.mark.proof
@pytest.mark.parametrize("sql", [sql for _, sql in REFUSED_PROOF], ids=[name for name, _ in REFUSED_PROOF])
async def test_the_runtime_role_is_refused_on_the_proof_tables(runtime_db, sql):
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await runtime_db.execute(sql)


async def test_the_runtime_role_owns_nothing_and_is_no_superuser(runtime_db):
    assert await runtime_db.fetchval("SELECT current_user") == roles.RUNTIME_ROLE
    assert await runtime_db.fetchval(
        "SELECT count(*) FROM pg_tables WHERE tableowner = current_user") == 0
    assert await runtime_db.fetchval(
        "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)") == 0
    assert await runtime_db.fetchval(
        "SELECT count(*) FROM pg_proc WHERE proowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)") == 0
    role = await runtime_db.fetchrow(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolinherit "
        "FROM pg_roles WHERE rolname = current_user")
    assert not any(role.values()), dict(role)
    assert await runtime_db.fetchval(
        "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
        "WHERE r.rolname = current_user") == 0, "the runtime role is a member of another role"
    assert not await runtime_db.fetchval("SELECT has_schema_privilege('public', 'CREATE')")
    assert not await runtime_db.fetchval("SELECT has_database_privilege(current_database(), 'CREATE')")


async def test_the_owner_owns_every_table_and_is_no_superuser(owner_db):
    owners = {r["tableowner"] for r in await owner_db.fetch(
        "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'")}
    assert owners == {roles.OWNER_ROLE}
    assert not await owner_db.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")


@pytest.mark.proof
async def test_the_runtime_grants_are_exactly_roles_py(db):
    """Table privileges of the runtime role, read back from the catalog: RUNTIME_GRANTS and nothing
    else on any table in public (a new table is reachable only once roles.py lists it)."""
    rows = await db.fetch(
        "SELECT c.relname, a.privilege_type FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public' "
        "CROSS JOIN LATERAL aclexplode(c.relacl) a "
        "WHERE c.relkind IN ('r', 'p', 'v', 'm') AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)",
        roles.RUNTIME_ROLE)
    granted: dict[str, set[str]] = {}
    for row in rows:
        granted.setdefault(row["relname"], set()).add(row["privilege_type"])
    assert granted == {table: set(privileges) for table, privileges in roles.RUNTIME_GRANTS.items()}
    public_tables = await db.fetchval(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "CROSS JOIN LATERAL aclexplode(c.relacl) a WHERE n.nspname = 'public' AND a.grantee = 0")
    assert public_tables == 0, "PUBLIC holds a privilege on a table or sequence"


@pytest.mark.proof
async def test_only_the_listed_functions_run_with_the_owners_rights(runtime_db):
    """Every SECURITY DEFINER function (not a trigger's) the runtime role may call is in RUNTIME_FUNCTIONS,
    and those are not executable by PUBLIC."""
    callable_ = {r["signature"] for r in await runtime_db.fetch(
        "SELECT p.oid::regprocedure::text AS signature FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace AND n.nspname = 'public' "
        "WHERE p.prosecdef AND p.prorettype <> 'trigger'::regtype "
        "AND has_function_privilege(p.oid, 'EXECUTE')")}
    expected = {await runtime_db.fetchval("SELECT $1::regprocedure::text", function)
                for function in roles.RUNTIME_FUNCTIONS}
    assert callable_ == expected
    for function in roles.RUNTIME_FUNCTIONS:
        assert not await runtime_db.fetchval(
            "SELECT EXISTS (SELECT FROM pg_proc p CROSS JOIN LATERAL aclexplode(coalesce(p.proacl, "
            "acldefault('f', p.proowner))) a WHERE p.oid = $1::regprocedure AND a.grantee = 0)", function), function


async def test_the_runtime_role_still_does_its_job(runtime_db, tenant):
    """The grants are enough for what the API does directly (a smoke test; the suite runs the app as
    this role throughout)."""
    assert await runtime_db.fetchval("SELECT count(*) FROM tenants WHERE id = $1", tenant) == 1
    assert await runtime_db.fetchval("SELECT count(*) FROM alembic_version") == 1
    async with runtime_db.transaction():
        await runtime_db.execute("DELETE FROM idempotency_keys WHERE false")
        await runtime_db.execute("UPDATE webhook_endpoints SET url = url WHERE false")


async def test_embedded_postgres_asks_for_passwords_and_keeps_them_in_private_files(tmp_path):
    pg = EmbeddedPostgres(tmp_path / "pg", free_port(), fast_unsafe=True, database="consent_ledger")
    await asyncio.to_thread(pg.start)
    try:
        secret = tmp_path / "pg.superuser-password"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(f"postgresql://postgres:wrong@127.0.0.1:{pg.port}/postgres")
        first = await asyncio.to_thread(pg.ensure_roles, "consent_ledger")
        assert await asyncio.to_thread(pg.ensure_roles, "consent_ledger") == first  # idempotent
        for role in (roles.OWNER_ROLE, roles.RUNTIME_ROLE):
            assert stat.S_IMODE((tmp_path / f"pg.{role}-password").stat().st_mode) == 0o600
        for role, url in zip((roles.OWNER_ROLE, roles.RUNTIME_ROLE), first):
            assert url.startswith(f"postgresql+asyncpg://{role}:")
            conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
            try:
                assert await conn.fetchval("SELECT current_user") == role
                assert await conn.fetchval("SELECT pg_get_userbyid(datdba) FROM pg_database "
                                           "WHERE datname = current_database()") == roles.OWNER_ROLE
            finally:
                await conn.close()
        superuser = await asyncpg.connect(pg.url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            assert await superuser.fetchval("SELECT current_database()") == "consent_ledger"
        finally:
            await superuser.close()
    finally:
        await asyncio.to_thread(pg.stop, "immediate")
