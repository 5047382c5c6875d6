"""devices.update_detail: the readable detail of a device's current update reason.

Revision ID: updates_0001
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "updates_0001"
down_revision = "0001"
branch_labels = ("updates",)
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("update_detail", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("update_detail")
