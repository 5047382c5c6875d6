"""Index devices.updated_at: the plane polls it to stream changes made by other processes.

Revision ID: plane_0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "plane_0002"
down_revision = "0001"
branch_labels = ("plane",)
depends_on = None


def upgrade() -> None:
    op.create_index("ix_devices_updated_at", "devices", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_devices_updated_at", table_name="devices")
