"""Flight recordings: the index of uploaded MCAP segments (files under <home>/recordings).

Revision ID: recordings_0001
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "recordings_0001"
down_revision = "0001"
branch_labels = ("recordings",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recording_segments",
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("start_ns", sa.BigInteger, nullable=False),
        sa.Column("kept", sa.Boolean, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_recording_segments_start", "recording_segments", ["device_id", "start_ns"])


def downgrade() -> None:
    op.drop_index("ix_recording_segments_start", table_name="recording_segments")
    op.drop_table("recording_segments")
