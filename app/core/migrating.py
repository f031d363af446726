"""What several migrations share: the runtime role they grant to, what exists at their point, and
the append-only triggers (the function ledger_refuse_change() is revision 0001's).

Imported only by alembic/versions/*; each helper reads the migration's own connection.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from app.core import roles


def runtime_role() -> str:
    """DB_RUNTIME_ROLE (or the tests' `runtime_role` attribute); it must exist already (README,
    "Database roles"): a grant to a missing role would fail later and less clearly."""
    from app.core.settings import Settings

    role = context.config.attributes.get("runtime_role") or Settings.from_env().db_runtime_role
    if not context.is_offline_mode():
        found = op.get_bind().execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": role})
        if found.scalar() is None:
            raise RuntimeError(roles.missing_role_message(role))
    return role


def present() -> set[str] | None:
    """The tables and functions that exist now (None offline: all of roles.py)."""
    if context.is_offline_mode():
        return None
    return {row[0] for row in op.get_bind().execute(sa.text(roles.PRESENT))}


def grant_runtime() -> None:
    """The runtime role's grants, exactly roles.py's for what exists at this revision."""
    for statement in roles.grant_statements(runtime_role(), present()):
        op.execute(statement)


def append_only(table: str) -> None:
    """Rows of `table` are never updated or deleted, nor the table truncated, by anyone but a
    superuser who disables the triggers (which verification then shows)."""
    op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}"
               " FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()")
    op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}"
               " FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()")
