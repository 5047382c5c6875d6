"""Ingest quarantine: the last messages ingest dropped, kept (bounded) for inspection.

Revision ID: quarantine_0001
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "quarantine_0001"
down_revision = "0001"
branch_labels = ("quarantine",)
depends_on = None

Stamp = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ingest_quarantine",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("topic", sa.String(256), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.String(1000), nullable=False),
        sa.Column("received_at", Stamp, nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_ingest_quarantine_device", "ingest_quarantine", ["device_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_ingest_quarantine_device", table_name="ingest_quarantine")
    op.drop_table("ingest_quarantine")
