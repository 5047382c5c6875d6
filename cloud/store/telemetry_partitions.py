"""Telemetry in day partitions on PostgreSQL; retention drops whole days.

On PostgreSQL ``telemetry`` is range-partitioned on ``at``: one partition per UTC day,
named ``telemetry_pYYYYMMDD``, plus ``telemetry_default`` for points outside every day
partition (a spool replayed from long ago, a day not created yet). The plane creates
the days ahead (:func:`ensure_days`), so ingest's writes land in day partitions, and
retention detaches and drops the days before the cutoff (:func:`drop_days_before`):
dropping a day costs the same whatever it holds, unlike deleting its rows.

SQLite keeps one ``telemetry`` table; the store deletes rows there instead, at the
same day granularity (:func:`retention_start`), so both keep exactly the same points.
"""

from __future__ import annotations

import datetime as dt
import re

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = [
    "DEFAULT_PARTITION",
    "day_partitions",
    "drop_days_before",
    "ensure_days",
    "partition_name",
    "retention_start",
]

PARENT = "telemetry"
DEFAULT_PARTITION = "telemetry_default"
_NAME = re.compile(r"^telemetry_p(\d{8})$")
LOCK_TIMEOUT = "5s"
"""How long partition DDL waits for a lock before giving up until the next run (a long
query on ``telemetry`` must not make every ingest write queue behind the DDL)."""


def retention_start(older_than: dt.datetime) -> dt.datetime:
    """The first instant kept: the start (UTC) of the day `older_than` falls in."""
    t = older_than if older_than.tzinfo else older_than.replace(tzinfo=dt.UTC)
    day = t.astimezone(dt.UTC).date()
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def partition_name(day: dt.date) -> str:
    return f"telemetry_p{day:%Y%m%d}"


def _bound(day: dt.date) -> str:
    return f"'{day.isoformat()} 00:00:00+00'"


def is_partitioned(conn: Connection) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.execute(
        sa.text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:t)"), {"t": PARENT}
    ).scalar()
    return kind == "p"


def day_partitions(conn: Connection) -> dict[dt.date, str]:
    """The day partitions of ``telemetry`` (day -> table name); {} when not partitioned."""
    if not is_partitioned(conn):
        return {}
    names = conn.execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(:t)"
        ),
        {"t": PARENT},
    ).scalars()
    out = {}
    for name in names:
        m = _NAME.match(str(name))
        if m:
            out[dt.datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=dt.UTC).date()] = str(
                name
            )
    return out


def ensure_days(conn: Connection, first: dt.date, last: dt.date) -> list[str]:
    """Create the day partitions from `first` to `last` (inclusive) that are missing.

    Points of such a day already in the default partition move into the new one, in
    the same transaction. Returns the names created. PostgreSQL only.
    """
    have = day_partitions(conn)
    created = []
    day = first
    conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    while day <= last:
        if day not in have:
            name, lo, hi = partition_name(day), _bound(day), _bound(day + dt.timedelta(days=1))
            conn.execute(
                sa.text(
                    f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
                )
            )
            conn.execute(
                sa.text(
                    f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} "
                    f"WHERE at >= {lo} AND at < {hi} RETURNING *) "
                    f"INSERT INTO {name} SELECT * FROM moved"
                )
            )
            conn.execute(
                sa.text(
                    f"ALTER TABLE {PARENT} ATTACH PARTITION {name} FOR VALUES FROM ({lo}) TO ({hi})"
                )
            )
            created.append(name)
        day += dt.timedelta(days=1)
    return created


def drop_days_before(conn: Connection, start: dt.datetime) -> list[str]:
    """Drop the day partitions wholly before `start` (a UTC midnight) and delete the
    default partition's points before it. Returns the names dropped. PostgreSQL only."""
    conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    dropped = []
    for day, name in sorted(day_partitions(conn).items()):
        if day + dt.timedelta(days=1) <= start.date():
            conn.execute(sa.text(f"ALTER TABLE {PARENT} DETACH PARTITION {name}"))
            conn.execute(sa.text(f"DROP TABLE {name}"))
            dropped.append(name)
    conn.execute(sa.text(f"DELETE FROM {DEFAULT_PARTITION} WHERE at < :s"), {"s": start})
    return dropped
