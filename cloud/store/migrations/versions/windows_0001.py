"""Maintenance windows per label selector: when matching devices may switch bundles.

Revision ID: windows_0001
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "windows_0001"
down_revision = "0001"
branch_labels = ("windows",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "maintenance_windows",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("selector", sa.Text(), nullable=False),
        sa.Column("window", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("maintenance_windows")
