"""An index on the audit log's (action, target): a keyed audit write (an abort
threshold's decision, written once across a plane restart) looks up the entries for
one action on one target, which without it scans the whole log.

Revision ID: audit_0001
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "audit_0001"
down_revision = "0001"
branch_labels = ("audit",)
depends_on = None

INDEX = "ix_audit_action_target"


def upgrade() -> None:
    op.create_index(INDEX, "audit", ["action", "target"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="audit")
