"""Who is changing the catalog: the `consent_ledger.actor` setting the catalog history's trigger
reads (alembic 0009; without it the history says `db:<role> (<application_name>)`).

A write route's principal sets `current` (app/auth/deps.py, for the routes whose scope changes the
catalog); a SQLAlchemy session then declares it when its transaction begins (`ActingSession`), and
an asyncpg route calls `declare()` in its own transaction. The setting is transaction-local, so a
pooled connection never carries one caller's name into another's work. Reads and consent writes
never pay the extra statement.
"""

from __future__ import annotations

from contextvars import ContextVar

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.orm import Session

current: ContextVar[str | None] = ContextVar("consent_ledger_actor", default=None)

SET = "SELECT set_config('consent_ledger.actor', $1, true)"
_SET_BOUND = text(SET.replace("$1", ":actor"))  # the same statement for a SQLAlchemy connection


async def declare(conn: asyncpg.Connection, actor: str) -> None:
    """Inside `conn`'s transaction: the changes it makes are `actor`'s."""
    await conn.execute(SET, actor)


class ActingSession(Session):
    """A session whose transactions declare `current`, when a write route has set it."""


@event.listens_for(ActingSession, "after_begin")
def _declare(session: Session, transaction, connection) -> None:  # noqa: ANN001 - SQLAlchemy's signature
    actor = current.get()
    if actor is not None:
        connection.execute(_SET_BOUND, {"actor": actor})
