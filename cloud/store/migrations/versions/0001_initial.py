"""The first schema: devices, labels, revocations, bundles, rollouts, telemetry, events, audit.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Stamp = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("cert_fingerprint", sa.String(64), nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("hardware_tags", sa.JSON, nullable=False),
        sa.Column("created_at", Stamp, nullable=False),
        sa.Column("updated_at", Stamp, nullable=False),
        sa.Column("last_seen", Stamp, nullable=True),
        sa.Column("online", sa.Boolean, nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False),
        sa.Column("revoked_at", Stamp, nullable=True),
        sa.Column("runtime_version", sa.String(64), nullable=False),
        sa.Column("active_bundle", sa.JSON, nullable=True),
        sa.Column("update_state", sa.String(32), nullable=False),
        sa.Column("update_reason", sa.String(128), nullable=False),
        sa.Column("health", sa.JSON, nullable=True),
        sa.Column("inventory", sa.JSON, nullable=True),
        sa.Column("desired_bundle", sa.JSON, nullable=True),
        sa.Column("desired_generation", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_devices_cert_fingerprint", "devices", ["cert_fingerprint"])
    op.create_table(
        "device_labels",
        sa.Column(
            "device_id",
            sa.String(64),
            sa.ForeignKey("devices.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("value", sa.String(256), nullable=False),
    )
    op.create_index("ix_device_labels_key_value", "device_labels", ["key", "value", "device_id"])
    op.create_table(
        "revoked_certificates",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("revoked_at", Stamp, nullable=False),
    )
    op.create_table(
        "bundles",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("policy_sha256", sa.String(64), nullable=False),
        sa.Column("oms_root_digest", sa.String(64), nullable=False),
        sa.Column("efb_sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("signer_key_id", sa.String(128), nullable=False),
        sa.Column("target_path", sa.String(512), nullable=False),
        sa.Column("published_at", Stamp, nullable=False),
        sa.Column("published_by", sa.String(128), nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_bundles_name_version"),
        sa.UniqueConstraint("name", "sequence", name="uq_bundles_name_sequence"),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("bundle_name", sa.String(128), nullable=False),
        sa.Column("bundle_version", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("status", sa.JSON, nullable=False),
        sa.Column("created_at", Stamp, nullable=False),
        sa.Column("updated_at", Stamp, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
    )
    op.create_table(
        "telemetry_batches",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("sequence", sa.BigInteger, primary_key=True),
        sa.Column("received_at", Stamp, nullable=False),
    )
    op.create_table(
        "telemetry",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("at", Stamp, nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("loop_p50_ms", sa.Float, nullable=False),
        sa.Column("loop_p99_ms", sa.Float, nullable=False),
        sa.Column("deadline_miss_rate", sa.Float, nullable=False),
        sa.Column("safety_interventions", sa.BigInteger, nullable=False),
        sa.Column("cpu_percent", sa.Float, nullable=False),
        sa.Column("memory_percent", sa.Float, nullable=False),
        sa.Column("temperature_c", sa.Float, nullable=False),
        sa.Column("extra", sa.JSON, nullable=True),
    )
    op.create_index("ix_telemetry_device_at", "telemetry", ["device_id", "at"])
    op.create_index("ix_telemetry_at", "telemetry", ["at"])
    op.create_table(
        "events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("at", Stamp, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("reason_code", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("bundle", sa.JSON, nullable=True),
        sa.UniqueConstraint("device_id", "sequence", name="uq_events_device_sequence"),
    )
    op.create_index("ix_events_device_at", "events", ["device_id", "at"])
    op.create_table(
        "audit",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at", Stamp, nullable=False),
        sa.Column("actor", sa.String(160), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(256), nullable=False),
        sa.Column("detail", sa.JSON, nullable=True),
    )


def downgrade() -> None:
    for table in (
        "audit",
        "events",
        "telemetry",
        "telemetry_batches",
        "rollouts",
        "bundles",
        "revoked_certificates",
        "device_labels",
        "devices",
    ):
        op.drop_table(table)
