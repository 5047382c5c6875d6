"""ATP router audit: signed tree heads kept outside the log, one row per (log, size).

Revision ID: router_0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "router_0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "router_audit_heads",
        sa.Column("log_id", sa.String(200), primary_key=True),
        sa.Column("size", sa.BigInteger, primary_key=True),
        sa.Column("root", sa.String(64), nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("sig", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("router_audit_heads")
