"""ATP router budgets: limits per scope, usage per (scope, period), open reservations.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = ("router",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "router_budgets",
        sa.Column("scope", sa.String(200), primary_key=True),
        sa.Column("limit_usd", sa.Float, nullable=False),
        sa.Column("limit_work_units", sa.Float, nullable=True),
        sa.Column("soft_fraction", sa.Float, nullable=False),
        sa.Column("safety_allowance_usd", sa.Float, nullable=False),
        sa.Column("period_s", sa.Float, nullable=False),
    )
    op.create_table(
        "router_budget_usage",
        sa.Column("scope", sa.String(200), primary_key=True),
        sa.Column("period", sa.BigInteger, primary_key=True),
        sa.Column("used_usd", sa.Float, nullable=False),
        sa.Column("reserved_usd", sa.Float, nullable=False),
        sa.Column("used_work_units", sa.Float, nullable=False),
        sa.Column("reserved_work_units", sa.Float, nullable=False),
    )
    op.create_table(
        "router_reservations",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("keys", sa.JSON, nullable=False),
        sa.Column("usd", sa.Float, nullable=False),
        sa.Column("work_units", sa.Float, nullable=False),
        sa.Column("safety", sa.Boolean, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_router_reservations_expires_at", "router_reservations", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_router_reservations_expires_at", table_name="router_reservations")
    op.drop_table("router_reservations")
    op.drop_table("router_budget_usage")
    op.drop_table("router_budgets")
