"""Least privilege in the database: what the runtime role may do, and how the two roles are made.

Two roles (docs/proof.md, "Roles"; README, "Database roles"):

- the OWNER (DATABASE_OWNER_URL) runs the migrations and owns every table and function;
- the RUNTIME role (DATABASE_URL; its name is DB_RUNTIME_ROLE) runs the API and the worker. It owns
  nothing and holds exactly the grants below, applied by the migrations (revision 0005 and any later
  one that adds a table or a function calls grant_statements() again, so the list here is the truth).

Chain heads (subjects), states (consent_states) and the Merkle log's order change only through the
triggers and SECURITY DEFINER functions the owner defines, hence SELECT-only tables below.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

OWNER_ROLE = "consent_ledger_owner"
RUNTIME_ROLE = "consent_ledger_runtime"  # the default of Settings.db_runtime_role

_CRUD = ("SELECT", "INSERT", "UPDATE", "DELETE")

# table -> the privileges the runtime role holds on it; nothing else on these or any other table.
RUNTIME_GRANTS: Mapping[str, tuple[str, ...]] = {
    # catalog
    "tenants": ("SELECT", "INSERT"),
    "collection_points": _CRUD,
    "collection_point_purposes": _CRUD,
    "notices": _CRUD,  # published notices are immutable by trigger
    "processors": _CRUD,
    "recipients": _CRUD,
    "purposes": _CRUD,
    "purpose_disclosures": ("SELECT", "INSERT"),
    "purpose_basis_changes": ("SELECT", "INSERT"),  # append-only by trigger (0006)
    "catalog_changes": ("SELECT",),  # written by the catalog tables' triggers only (0009)
    # ledger: events and evidence are appended; heads and states move only by trigger
    "subjects": ("SELECT",),
    "consent_events": ("SELECT", "INSERT"),
    "consent_states": ("SELECT",),
    "consent_evidence": ("SELECT", "INSERT"),
    "subject_transactions": ("SELECT", "INSERT"),  # append-only by trigger (0006)
    # duties: records are appended (checked and folded into duties by trigger, 0007)
    "duty_records": ("SELECT", "INSERT"),
    "duties": ("SELECT",),
    "tenant_settings": ("SELECT", "INSERT", "UPDATE"),
    "purpose_wording_changes": ("SELECT", "INSERT"),  # append-only by trigger (0007)
    "reconsent_runs": ("SELECT", "INSERT", "UPDATE"),
    # the auditors' tenant-wide verification runs: a report the worker writes, not evidence (0010)
    "verification_runs": ("SELECT", "INSERT", "UPDATE"),
    # operational state, purged by age
    "idempotency_keys": _CRUD,
    "webhook_messages": _CRUD,
    "webhook_endpoints": _CRUD,
    "webhook_deliveries": _CRUD,
    "webhook_attempts": _CRUD,
    # the Merkle log: its order is taken through ledger_log_take(), never written directly
    "ledger_log_queue": ("SELECT",),
    "ledger_log": ("SELECT",),
    "ledger_log_nodes": ("SELECT", "INSERT"),
    "ledger_checkpoints": ("SELECT", "INSERT"),
    "receipts": ("SELECT", "INSERT"),
    "evidence_purges": ("SELECT",),  # written by ledger_purge_evidence() only
    "alembic_version": ("SELECT",),  # /readyz compares it with the code's head
}

# The SECURITY DEFINER functions the runtime role may call (EXECUTE is revoked from PUBLIC).
RUNTIME_FUNCTIONS: tuple[str, ...] = (
    "ledger_lock_subject(text, text, boolean)",
    "ledger_log_take(text, integer)",
    "ledger_purge_evidence(timestamptz, text)",
    "ledger_lock_duties(text, uuid[])",
    "ledger_lock_open_duties(text, uuid, text[], text[])",
    "ledger_claim_duties(text, integer)",
)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def grant_statements(role: str, present: Collection[str] | None = None) -> list[str]:
    """Everything the runtime role may do, from nothing: first every privilege on the listed tables,
    sequences, functions and schema public is revoked (from the role, and from PUBLIC where PUBLIC
    would otherwise hold one), then exactly RUNTIME_GRANTS and RUNTIME_FUNCTIONS are granted.
    `present`: the tables that exist at the migration calling this (a later migration adds the
    rest and calls it again); None for all."""
    who = quote_ident(role)
    grants = {t: p for t, p in RUNTIME_GRANTS.items() if present is None or t in present}
    functions = tuple(f for f in RUNTIME_FUNCTIONS if present is None or f.split("(")[0] in present)
    tables = ", ".join(quote_ident(table) for table in grants)
    statements = [
        f"REVOKE ALL ON TABLE {tables} FROM PUBLIC, {who}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM PUBLIC, {who}",
        f"REVOKE ALL ON SCHEMA public FROM {who}",
        *(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC, {who}" for function in functions),
        f"GRANT USAGE ON SCHEMA public TO {who}",
    ]
    by_privileges: dict[tuple[str, ...], list[str]] = {}
    for table, privileges in grants.items():
        by_privileges.setdefault(privileges, []).append(quote_ident(table))
    statements += [f"GRANT {', '.join(privileges)} ON TABLE {', '.join(names)} TO {who}"
                   for privileges, names in by_privileges.items()]
    statements.append(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {who}")
    statements += [f"GRANT EXECUTE ON FUNCTION {function} TO {who}" for function in functions]
    return statements


PRESENT = """
SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'
UNION SELECT routine_name FROM information_schema.routines WHERE routine_schema = 'public'
"""


def revoke_statements(role: str, present: Collection[str] | None = None) -> list[str]:
    """Undo grant_statements(): the role keeps nothing; PUBLIC gets back the EXECUTE every new function
    has by default (the state before the grants). `present` as for grant_statements()."""
    who = quote_ident(role)
    tables = ", ".join(quote_ident(table) for table in RUNTIME_GRANTS if present is None or table in present)
    functions = tuple(f for f in RUNTIME_FUNCTIONS if present is None or f.split("(")[0] in present)
    return [
        f"REVOKE ALL ON TABLE {tables} FROM {who}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {who}",
        *(f"REVOKE ALL ON FUNCTION {function} FROM {who}" for function in functions),
        *(f"GRANT EXECUTE ON FUNCTION {function} TO PUBLIC" for function in functions),
        f"REVOKE ALL ON SCHEMA public FROM {who}",
    ]


# Only the schema's owner may do this: PostgreSQL 15+ has it already (pg_database_owner owns public),
# on 14 it works once the DBA has made the owner role the schema's owner (README); otherwise a notice.
REVOKE_PUBLIC_CREATE = """
DO $$
BEGIN
    REVOKE CREATE ON SCHEMA public FROM PUBLIC;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'not the owner of schema public: CREATE for PUBLIC left as it is (README, Database roles)';
END
$$
"""


def missing_role_message(role: str) -> str:
    return f"role {role} does not exist: create it (README, Database roles) or set DB_RUNTIME_ROLE"


# --- making the roles (embedded PostgreSQL, the tests, the benchmark; a DBA runs the README's SQL) ---

_ATTRIBUTES = {
    OWNER_ROLE: "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT",
    RUNTIME_ROLE: "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT",
}


def role_statements(passwords: Mapping[str, str]) -> list[str]:
    """CREATE (if missing) or ALTER each of the two roles to its attributes and `passwords[role]`, so
    running them again on every start keeps the passwords where the caller keeps them."""
    statements = []
    for role, attributes in _ATTRIBUTES.items():
        statements.append(f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {quote_literal(role)}) THEN
        CREATE ROLE {quote_ident(role)};
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- made at the same moment by another process
END
$$""")
        statements.append(f"ALTER ROLE {quote_ident(role)} {attributes} PASSWORD {quote_literal(passwords[role])}")
    return statements


async def ensure(superuser_dsn: str, database: str, passwords: Mapping[str, str]) -> None:
    """With a superuser (asyncpg DSN of any database on the server): both roles with these passwords,
    and `database` owned by the owner role if it does not exist yet (an existing one is left as it is).
    On PostgreSQL 14 the new database's schema public is handed to the owner role, as 15+ does."""
    import asyncpg

    conn = await asyncpg.connect(superuser_dsn)
    try:
        for statement in role_statements(passwords):
            await conn.execute(statement)
        created = not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if created:
            await conn.execute(f"CREATE DATABASE {quote_ident(database)} OWNER {quote_ident(OWNER_ROLE)}")
        old = conn.get_server_version().major < 15
    finally:
        await conn.close()
    if created and old:
        conn = await asyncpg.connect(superuser_dsn, database=database)
        try:
            await conn.execute(f"ALTER SCHEMA public OWNER TO {quote_ident(OWNER_ROLE)}")
            await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        finally:
            await conn.close()


def with_login(url: str, user: str, password: str, database: str) -> str:
    """`url` (SQLAlchemy or asyncpg spelling) with another user, password and database."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(username=user, password=password, database=database).render_as_string(
        hide_password=False)
