"""Telemetry in day partitions on PostgreSQL; an index for batch-marker retention.

PostgreSQL: ``telemetry`` becomes a table range-partitioned on ``at`` (one partition
per UTC day, ``telemetry_pYYYYMMDD``, and ``telemetry_default`` for the rest). Existing
points are copied over: a partition is made for each day of the last year that has
points, and for yesterday to two days ahead; older points go to the default
partition. SQLite keeps its one table. Both: ``telemetry_batches.received_at`` is
indexed, so retention's delete of old batch markers does not scan the table.

Revision ID: telemetry_0001
Revises: 0001
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

from cloud.store.telemetry_partitions import DEFAULT_PARTITION, ensure_days

revision = "telemetry_0001"
down_revision = "0001"
branch_labels = ("telemetry",)
depends_on = None

COLUMNS = (
    "id, device_id, at, sequence, loop_p50_ms, loop_p99_ms, deadline_miss_rate, "
    "safety_interventions, cpu_percent, memory_percent, temperature_c, extra"
)


def upgrade() -> None:
    op.create_index("ix_telemetry_batches_received_at", "telemetry_batches", ["received_at"])
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    for stmt in (
        "ALTER TABLE telemetry RENAME TO telemetry_unpartitioned",
        "ALTER INDEX telemetry_pkey RENAME TO telemetry_unpartitioned_pkey",
        "ALTER SEQUENCE telemetry_id_seq RENAME TO telemetry_unpartitioned_id_seq",
        "DROP INDEX ix_telemetry_device_at",
        "DROP INDEX ix_telemetry_at",
        """CREATE TABLE telemetry (
            id BIGSERIAL NOT NULL,
            device_id VARCHAR(64) NOT NULL,
            at TIMESTAMP WITH TIME ZONE NOT NULL,
            sequence BIGINT NOT NULL,
            loop_p50_ms FLOAT NOT NULL,
            loop_p99_ms FLOAT NOT NULL,
            deadline_miss_rate FLOAT NOT NULL,
            safety_interventions BIGINT NOT NULL,
            cpu_percent FLOAT NOT NULL,
            memory_percent FLOAT NOT NULL,
            temperature_c FLOAT NOT NULL,
            extra JSON,
            PRIMARY KEY (id, at)
        ) PARTITION BY RANGE (at)""",
        "CREATE INDEX ix_telemetry_device_at ON telemetry (device_id, at)",
        "CREATE INDEX ix_telemetry_at ON telemetry (at)",
        f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF telemetry DEFAULT",
    ):
        conn.execute(sa.text(stmt))
    today = dt.datetime.now(dt.UTC).date()
    days = conn.execute(
        sa.text(
            "SELECT DISTINCT (at AT TIME ZONE 'UTC')::date FROM telemetry_unpartitioned "
            "WHERE at >= :since AND at < :until"
        ),
        {"since": today - dt.timedelta(days=366), "until": today + dt.timedelta(days=3)},
    ).scalars()
    for day in sorted({*days, *(today + dt.timedelta(days=k) for k in range(-1, 3))}):
        ensure_days(conn, day, day)
    conn.execute(
        sa.text(f"INSERT INTO telemetry ({COLUMNS}) SELECT {COLUMNS} FROM telemetry_unpartitioned")
    )
    conn.execute(
        sa.text(
            "SELECT setval('telemetry_id_seq', "
            "COALESCE((SELECT max(id) FROM telemetry_unpartitioned), 0) + 1, false)"
        )
    )
    conn.execute(sa.text("DROP TABLE telemetry_unpartitioned"))


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        for stmt in (
            "ALTER TABLE telemetry RENAME TO telemetry_partitioned",
            "ALTER SEQUENCE telemetry_id_seq RENAME TO telemetry_partitioned_id_seq",
            "ALTER INDEX ix_telemetry_device_at RENAME TO ix_telemetry_partitioned_device_at",
            "ALTER INDEX ix_telemetry_at RENAME TO ix_telemetry_partitioned_at",
            "ALTER INDEX telemetry_pkey RENAME TO telemetry_partitioned_pkey",
            """CREATE TABLE telemetry (
                id BIGSERIAL PRIMARY KEY,
                device_id VARCHAR(64) NOT NULL,
                at TIMESTAMP WITH TIME ZONE NOT NULL,
                sequence BIGINT NOT NULL,
                loop_p50_ms FLOAT NOT NULL,
                loop_p99_ms FLOAT NOT NULL,
                deadline_miss_rate FLOAT NOT NULL,
                safety_interventions BIGINT NOT NULL,
                cpu_percent FLOAT NOT NULL,
                memory_percent FLOAT NOT NULL,
                temperature_c FLOAT NOT NULL,
                extra JSON
            )""",
            f"INSERT INTO telemetry ({COLUMNS}) SELECT {COLUMNS} FROM telemetry_partitioned",
            "SELECT setval('telemetry_id_seq', "
            "COALESCE((SELECT max(id) FROM telemetry), 0) + 1, false)",
            "DROP TABLE telemetry_partitioned",
            "CREATE INDEX ix_telemetry_device_at ON telemetry (device_id, at)",
            "CREATE INDEX ix_telemetry_at ON telemetry (at)",
        ):
            conn.execute(sa.text(stmt))
    op.drop_index("ix_telemetry_batches_received_at", table_name="telemetry_batches")
