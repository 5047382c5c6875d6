"""The plane's telemetry upkeep: day partitions made ahead, old days removed.

One pass (:func:`upkeep_once`) creates the telemetry day partitions from today to
``ahead_days`` ahead (PostgreSQL) and removes the days older than
``telemetry_retention_days`` (PostgreSQL drops their partitions; SQLite deletes the
rows). The plane runs a pass at start and then every ``every_s`` (:func:`run_upkeep`).
With several plane replicas on one PostgreSQL only the holder of the
``telemetry-upkeep`` lease (`cloud.lease`) runs it, and its writes carry the lease's
epoch (`cloud.store.fence`): a holder that stalled past its lease and wakes up has its
writes refused. A replica that takes the lease over runs a pass at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

from cloud.lease import AdvisoryLease, lease_for
from cloud.store import Store
from cloud.store.fence import fenced
from cloud.store.telemetry import RetentionResult

__all__ = ["AHEAD_DAYS", "LEASE", "fenced_upkeep", "run_upkeep", "upkeep_once"]

log = logging.getLogger(__name__)
LEASE = "telemetry-upkeep"
AHEAD_DAYS = 3
"""Day partitions kept ready ahead of today: ingest never waits for one, and a plane
down for a weekend does not push points into the default partition."""


def upkeep_once(
    store: Store, retention_days: float, now: dt.datetime | None = None
) -> tuple[list[str], RetentionResult]:
    """One pass: (partitions created, what retention removed)."""
    now = now or dt.datetime.now(dt.UTC)
    created = store.prepare_telemetry_days(now.date(), AHEAD_DAYS)
    removed = store.prune_telemetry(now - dt.timedelta(days=retention_days))
    return created, removed


def fenced_upkeep(
    store: Store,
    retention_days: float,
    lease: AdvisoryLease | None,
    now: dt.datetime | None = None,
) -> tuple[list[str], RetentionResult]:
    """:func:`upkeep_once`, its writes carrying `lease`'s current epoch (if any)."""
    if lease is None:
        return upkeep_once(store, retention_days, now)
    with fenced(lease.name, lease.epoch, lease.lease_s):
        return upkeep_once(store, retention_days, now)


async def run_upkeep(store: Store, retention_days: float, every_s: float = 3600.0) -> None:
    """Run :func:`upkeep_once` now and every `every_s` while this replica leads."""
    loop = asyncio.get_running_loop()
    kick = asyncio.Event()

    def changed(held: bool) -> None:
        if held:
            loop.call_soon_threadsafe(kick.set)

    url = store.engine.url.render_as_string(hide_password=False)
    lease = await asyncio.to_thread(lease_for, url, LEASE, changed)
    try:
        while True:
            if lease is None or lease.held:
                try:
                    created, removed = await asyncio.to_thread(
                        fenced_upkeep, store, retention_days, lease
                    )
                    if created or removed.points or removed.partitions:
                        log.info(
                            "telemetry upkeep: created %s; kept from %s, removed %s",
                            ", ".join(created) or "no partitions",
                            removed.kept_from.isoformat(),
                            ", ".join(removed.partitions) or f"{removed.points or 0} points",
                        )
                except Exception as exc:
                    log.warning("telemetry upkeep failed (retrying later): %s", exc)
            kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(kick.wait(), every_s)
    finally:
        if lease is not None:
            await asyncio.to_thread(lease.stop)
