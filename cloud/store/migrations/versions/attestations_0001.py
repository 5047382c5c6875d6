"""Parity attestations: signed DSSE envelopes indexed by policy digest and bundle.

Revision ID: attestations_0001
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "attestations_0001"
down_revision = "0001"
branch_labels = ("attestations",)
depends_on = None

Stamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "attestations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("policy_sha256", sa.String(64), nullable=False),
        sa.Column("root_digest", sa.String(64), nullable=False),
        sa.Column("bundle_name", sa.String(64), nullable=False),
        sa.Column("bundle_version", sa.String(64), nullable=False),
        sa.Column("bundle_sequence", sa.BigInteger, nullable=False),
        sa.Column("verdict", sa.String(32), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("issued_at", Stamp, nullable=False),
        sa.Column("expires_at", Stamp, nullable=False),
        sa.Column("envelope", sa.LargeBinary, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
    )
    op.create_index("ix_attestations_policy", "attestations", ["policy_sha256", "issued_at"])
    op.create_index("ix_attestations_bundle", "attestations", ["bundle_name", "issued_at"])


def downgrade() -> None:
    op.drop_index("ix_attestations_bundle", table_name="attestations")
    op.drop_index("ix_attestations_policy", table_name="attestations")
    op.drop_table("attestations")
