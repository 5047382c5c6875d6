"""MQTT ingest: device telemetry, events and presence into the store.

Several ingest processes may run at once: with ``subscription="shared"`` they subscribe
through ``$share/edgeflux-ingest/edgeflux/v1/devices/+/<kind>`` and the broker splits
the messages between them; with ``"exclusive"`` (the default: lossless across Mosquitto
restarts, see :class:`IngestSettings`) each holds a persistent subscription of its own
and the store's unique key drops what a second replica also wrote. Each message is

1. validated before use (:func:`cloud.ingest_decode.decode`): well-formed topic, size
   cap, a protobuf that parses, a payload ``device_id`` equal to the topic's device
   (the broker ACL already ties the topic to the certificate, so this closes the
   topic ↔ payload ↔ certificate chain), and every field within what the store's
   columns hold; timestamps too far in the future are clamped to the receive time.
   Anything else is dropped alone: counted by reason, logged (rate-limited per
   device), quarantined for inspection and acknowledged. It never reaches the store
   and never holds up other messages;
2. written in batches by one writer thread, de-duplicated by (device, sequence) —
   the store's unique key makes a QoS 1 redelivery or a spool replay a no-op. If the
   store refuses a batch, it is written row by row and only the refused row dropped;
3. acknowledged (PUBACK) only after its write committed (manual ack). If the store is
   down the batch is retried and nothing is acknowledged; if the process dies, the
   broker redelivers the unacknowledged messages from the persistent session.

Usage::

    ingest = Ingest(store, CloudMqttSettings(host=..., port=8883, ca=..., cert=..., key=...))
    ingest.start(); ...; ingest.stop()
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import queue
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import click

from cloud.ingest_decode import DEFAULT_MAX_SKEW_S, Decoded, Dropped, decode
from cloud.mqtt import PREFIX, SHARE_GROUP, CloudMqtt, CloudMqttSettings, Delivery
from cloud.store import ConflictError, Store, StoreUnavailable
from cloud.store.ingest_batch import (
    record_events_many,
    record_telemetry_many,
    set_online_many,
)
from cloud.store.quarantine import QuarantineRecord, QuarantineStore

__all__ = [
    "Decoded",
    "Dropped",
    "Ingest",
    "IngestSettings",
    "decode",
    "exclusive_filters",
    "ingest_cmd",
    "quarantine_cmd",
    "shared_filters",
]

log = logging.getLogger(__name__)

Quarantine = Callable[[Sequence[QuarantineRecord]], None]
"""Where dropped messages go for inspection (default: the store's quarantine table)."""


@dataclass(frozen=True)
class IngestSettings:
    batch_max: int = 500
    """Most messages written per store round."""
    flush_ms: float = 50.0
    """Longest a message waits for its batch to fill."""
    max_payload_bytes: int = 256 * 1024
    dedup_cache: int = 200_000
    """(device, kind, sequence) keys remembered to skip duplicate writes without a query."""
    retry_s: float = 0.5
    max_clock_skew_s: float = DEFAULT_MAX_SKEW_S
    """Timestamps further ahead of the plane's clock are clamped to the receive time."""
    drop_log_interval_s: float = 10.0
    """At most one "dropped" log line per device per interval (the rest are counted)."""
    subscription: Literal["exclusive", "shared"] = "exclusive"
    """``shared``: ``$share/edgeflux-ingest/...`` — replicas split the load. ``exclusive``:
    a plain persistent subscription — every replica sees everything (the store drops
    the duplicates). Mosquitto 2.0 does not restore shared subscriptions from its
    persistence file, so messages published after a broker restart and before a shared
    subscriber re-subscribes are lost; exclusive loses nothing (docs/architecture.md)."""


def shared_filters(group: str = SHARE_GROUP) -> list[str]:
    return [f"$share/{group}/{PREFIX}/+/{k}" for k in ("telemetry", "events", "state")]


def exclusive_filters() -> list[str]:
    return [f"{PREFIX}/+/{k}" for k in ("telemetry", "events", "state")]


class _DropLog:
    """One warning per device per interval; what it held back is counted in the next one."""

    def __init__(self, interval_s: float, max_devices: int = 10_000) -> None:
        self.interval_s = interval_s
        self.max_devices = max_devices
        self._last: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def __call__(self, d: Dropped) -> None:
        now = time.monotonic()
        last, held = self._last.pop(d.device_id, (-math.inf, 0))
        if now - last < self.interval_s:
            self._last[d.device_id] = (last, held + 1)
            return
        more = f" ({held} more from this device since the last line)" if held else ""
        log.warning("ingest dropped a message (%s): %s%s", d.reason, d.detail[:500], more)
        self._last[d.device_id] = (now, 0)
        while len(self._last) > self.max_devices:
            self._last.popitem(last=False)


Work = tuple[Delivery, dt.datetime]


class Ingest:
    """Subscribes, validates, de-duplicates, writes in batches, then acknowledges.

    A message that fails validation, or that the store refuses, is dropped alone: it
    is counted (``dropped.<reason>``, and ``on_drop(reason)``), logged at most once per
    device per ``drop_log_interval_s``, handed to ``quarantine`` (best effort) and
    acknowledged, so it is never redelivered and never holds up anyone else's data.
    Only :class:`StoreUnavailable` (the database is down) keeps a batch unacknowledged.
    """

    def __init__(
        self,
        store: Store,
        mqtt: CloudMqttSettings,
        settings: IngestSettings | None = None,
        *,
        on_committed: Callable[[Sequence[Decoded], float], None] | None = None,
        on_drop: Callable[[str], None] | None = None,
        quarantine: Quarantine | None = None,
        mqtt5: bool = True,
    ) -> None:
        """`mqtt5`: try MQTT 5 first (off for a broker known to speak 3.1.1 only)."""
        self.store = store
        self.settings = settings or IngestSettings()
        self.counters: Counter[str] = Counter()
        self._on_committed = on_committed
        self._on_drop = on_drop
        self._quarantine = quarantine or QuarantineStore(store.engine).put_many
        self._drop_log = _DropLog(self.settings.drop_log_interval_s)
        self._queue: queue.Queue[Work] = queue.Queue()
        self._seen: OrderedDict[tuple[str, str, int], None] = OrderedDict()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._mqtt = CloudMqtt(
            mqtt,
            on_message=self._enqueue,
            manual_ack=True,
            mqtt5=mqtt5,
            on_refused=lambda _f, _code: self.counters.update(["subscriptions_refused"]),
        )
        shared = self.settings.subscription == "shared"
        for f in shared_filters() if shared else exclusive_filters():
            self._mqtt.subscribe(f)

    def start(self) -> None:
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self._writer.start()
        self._mqtt.start()

    def stop(self) -> None:
        # The writer stops first, while the connection still carries its acknowledgements:
        # a message it counted and acknowledged is never redelivered; one it did not reach
        # stays unacknowledged, so the broker redelivers it to the next ingest.
        self._stop.set()
        if self._writer is not None:
            self._writer.join(10)
        self._mqtt.stop()

    def is_connected(self) -> bool:
        return self._mqtt.is_connected()

    def _enqueue(self, d: Delivery) -> None:
        self.counters["received"] += 1
        self._queue.put((d, dt.datetime.now(dt.UTC)))

    def _write_loop(self) -> None:
        s = self.settings
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + s.flush_ms / 1000
            while len(batch) < s.batch_max:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            while not self._stop.is_set():
                try:
                    self._process(batch)
                    break
                except StoreUnavailable as exc:
                    self.counters["store_unavailable"] += 1
                    log.warning("store unavailable, retrying %d messages: %s", len(batch), exc)
                    self._stop.wait(s.retry_s)
                except Exception:
                    # Every per-message failure is isolated in _process; this is a bug.
                    # Not acknowledged (the broker redelivers after a reconnect); the
                    # loop itself survives.
                    self.counters["errors"] += 1
                    log.exception("ingest failed on a batch of %d messages", len(batch))
                    break

    def _process(self, batch: list[Work]) -> None:
        s = self.settings
        done: list[Decoded] = []
        kinds: dict[str, list[tuple[Decoded, Work]]] = {"state": [], "event": [], "telemetry": []}
        dropped: list[QuarantineRecord] = []
        for work in batch:
            delivery, received = work
            result = decode(
                delivery.topic, delivery.payload, received, s.max_payload_bytes, s.max_clock_skew_s
            )
            if isinstance(result, Dropped):
                dropped.append(self._drop(result, work))
                continue
            if result.clamped:
                self.counters["clamped_time"] += result.clamped
            if result.kind != "state" and (result.device_id, result.kind, result.sequence) in (
                self._seen
            ):
                self.counters["skipped"] += 1
                continue
            kinds[result.kind if result.kind in ("state", "telemetry") else "event"].append(
                (result, work)
            )
        # Presence, then events, then telemetry: a sample in the same batch as an update
        # event sees the state that event set, as when they were written one at a time.
        done += self._write_kind("state", kinds["state"], dropped)
        done += self._write_kind("event", kinds["event"], dropped)
        done += self._write_kind("telemetry", kinds["telemetry"], dropped)
        # Every write of this batch committed (or its message was dropped for good):
        # only now may the broker forget them.
        for delivery, _ in batch:
            delivery.ack()
        if dropped:
            try:
                self._quarantine(dropped)
            except Exception as exc:  # best effort: inspection must not cost ingest
                self.counters["quarantine_errors"] += 1
                log.warning("could not quarantine %d dropped messages: %s", len(dropped), exc)
        if done and self._on_committed is not None:
            self._on_committed(done, time.time())

    def _drop(self, d: Dropped, work: Work) -> QuarantineRecord:
        self.counters[f"dropped.{d.reason}"] += 1
        if self._on_drop is not None:
            self._on_drop(d.reason)
        self._drop_log(d)
        delivery, received = work
        return QuarantineRecord(
            device_id=d.device_id,
            topic=delivery.topic,
            reason=d.reason,
            detail=d.detail,
            received_at=received,
            payload=delivery.payload,
            size_bytes=len(delivery.payload),
        )

    def _remember(self, key: tuple[str, str, int]) -> None:
        self._seen[key] = None
        if len(self._seen) > self.settings.dedup_cache:
            self._seen.popitem(last=False)

    def _write_kind(
        self, kind: str, items: list[tuple[Decoded, Work]], dropped: list[QuarantineRecord]
    ) -> list[Decoded]:
        """One transaction for all messages of one kind; row by row if that fails.

        Row by row on a conflict (replicas racing on one key) and on any other store
        error, so the one row the store refuses is dropped and the others are stored.
        """
        if not items:
            return []
        stored: list[bool | Exception]
        try:
            stored = list(self._write_many(kind, items))
        except StoreUnavailable:
            raise
        except Exception as exc:
            conflict = isinstance(exc, ConflictError)
            self.counters["batch_conflicts" if conflict else "batch_row_by_row"] += 1
            stored = [self._write_one(kind, m, w) for m, w in items]
        out = []
        for (m, work), ok in zip(items, stored, strict=True):
            if isinstance(ok, Exception):
                dropped.append(self._drop(_refused(m, ok), work))
                continue
            if kind == "state":
                self.counters["state" if ok else "skipped"] += 1  # unknown or revoked
            else:
                self._remember((m.device_id, m.kind, m.sequence))
                # False: a duplicate (device, sequence), or a device unknown to /
                # revoked by the store.
                self.counters["stored" if ok else "skipped"] += 1
            if ok:
                out.append(m)
        return out

    def _write_many(self, kind: str, items: list[tuple[Decoded, Work]]) -> list[bool]:
        if kind == "telemetry":
            writes = [(m.device_id, m.sequence, m.telemetry or [], w[1]) for m, w in items]
            return record_telemetry_many(self.store, writes, self._future_limit())
        if kind == "event":
            events = [m.event for m, _ in items]
            assert all(e is not None for e in events)
            return record_events_many(self.store, events)  # type: ignore[arg-type]
        presence = [
            (m.device_id, bool(m.online), m.at or w[1], m.runtime_version) for m, w in items
        ]
        return set_online_many(self.store, presence)

    def _future_limit(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.settings.max_clock_skew_s)

    def _write_one(self, kind: str, m: Decoded, work: Work) -> bool | Exception:
        """Store one message; the store's error if it refuses this one."""
        try:
            try:
                return self._write_many(kind, [(m, work)])[0]
            except ConflictError:  # a replica wrote it meanwhile: the one-row path
                if kind == "telemetry":
                    return self.store.record_telemetry(
                        m.device_id, m.sequence, m.telemetry or [], work[1]
                    )
                if kind == "event" and m.event is not None:
                    return self.store.record_event(m.event)
                raise
        except StoreUnavailable:
            raise
        except Exception as exc:
            return exc


def _refused(m: Decoded, exc: BaseException | None) -> Dropped:
    what = f"{type(exc).__name__}: {exc}" if exc is not None else "refused"
    first = what.splitlines()[0][:300] if what else what
    return Dropped(
        "store_refused", f"{m.kind} {m.sequence} from {m.device_id}: {first}", m.device_id
    )


@click.command("ingest")
@click.option(
    "--home",
    "home_dir",
    type=click.Path(file_okay=False),
    envvar="EDGEFLUX_CLOUD_HOME",
    default=".",
    show_default=True,
)
@click.option("--broker-url", help="mqtt(s)://host:port (default: the home's broker_url).")
@click.option(
    "--client-id",
    default="edgeflux-ingest",
    show_default=True,
    help="This replica's MQTT identity (edgeflux-…): its certificate is issued from the "
    "home's CA on first use and its name is the client id; give each replica its own "
    "and list them in `cloud broker-config --ingest-identity`.",
)
@click.option("--shared", is_flag=True, help="Split the load with other --shared replicas.")
@click.option(
    "--replicas",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Run this many --shared replicas as processes of their own, named "
    "<client-id>-1 … <client-id>-N (list each in `cloud broker-config --ingest-identity`).",
)
def ingest_cmd(
    home_dir: str, broker_url: str | None, client_id: str, shared: bool, replicas: int
) -> None:
    """Run MQTT ingest (telemetry, events, presence → store) until SIGTERM / Ctrl-C."""
    if replicas == 1:
        _serve_ingest(home_dir, broker_url, client_id, shared)
        return
    _serve_replicas(home_dir, broker_url, [f"{client_id}-{i}" for i in range(1, replicas + 1)])


def _open_ingest(
    home_dir: str, broker_url: str | None, client_id: str
) -> tuple[Store, CloudMqttSettings]:
    import dataclasses

    from cloud.home import CloudHome, HomeError
    from cloud.push import PushError, broker_settings
    from cloud.store import StoreError

    try:
        home = CloudHome.at(home_dir)
        home.check()
        store = Store.open(home.database_url(home.config()))
    except (HomeError, StoreError) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        mqtt = dataclasses.replace(
            broker_settings(home, broker_url, client_id), client_id=client_id
        )
    except PushError as exc:
        store.close()
        raise click.ClickException(str(exc)) from exc
    return store, mqtt


def _serve_ingest(home_dir: str, broker_url: str | None, client_id: str, shared: bool) -> None:
    import signal

    from cloud.mqtt import CloudMqttError

    store, mqtt = _open_ingest(home_dir, broker_url, client_id)
    ingest = Ingest(store, mqtt, IngestSettings(subscription="shared" if shared else "exclusive"))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        ingest.start()
    except CloudMqttError as exc:
        store.close()
        raise click.ClickException(str(exc)) from exc
    click.echo(f"ingest {client_id}: {mqtt.host}:{mqtt.port} -> {store.url}", err=True)
    stop.wait()
    ingest.stop()
    store.close()
    click.echo(json.dumps(dict(ingest.counters), sort_keys=True), err=True)


def _replica_main(home_dir: str, broker_url: str | None, client_id: str) -> None:
    try:
        _serve_ingest(home_dir, broker_url, client_id, shared=True)
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None


def _serve_replicas(home_dir: str, broker_url: str | None, names: list[str]) -> None:
    """Shared replicas, one process each (one writer thread each: they use every core).

    Their certificates are issued here first, one after the other; SIGTERM / Ctrl-C is
    passed on to every replica, and the command fails if any replica failed.
    """
    import multiprocessing as mp
    import signal

    for name in names:  # issue the certificates (and migrate the store) once, up front
        store, _ = _open_ingest(home_dir, broker_url, name)
        store.close()
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_replica_main, args=(home_dir, broker_url, n), name=n) for n in names
    ]
    for p in procs:
        p.start()

    def forward(*_: object) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                p.terminate()  # SIGTERM: the replica stops cleanly

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    for p in procs:
        p.join()
    failed = [p.name for p in procs if p.exitcode not in (0, -signal.SIGTERM)]
    if failed:
        raise click.ClickException(f"ingest replicas failed: {', '.join(failed)}")


@click.command("quarantine")
@click.option(
    "--home",
    "home_dir",
    type=click.Path(file_okay=False),
    envvar="EDGEFLUX_CLOUD_HOME",
    default=".",
    show_default=True,
)
@click.option("--device", "device_id", help="Only this device's messages.")
@click.option("--reason", help="Only this reason (e.g. bad_time, bad_string, out_of_range).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (payload hex).")
def quarantine_cmd(
    home_dir: str, device_id: str | None, reason: str | None, limit: int, as_json: bool
) -> None:
    """Show the newest messages ingest dropped, newest first."""
    from cloud.home import CloudHome, HomeError
    from cloud.store import StoreError

    try:
        home = CloudHome.at(home_dir)
        home.check()
        store = Store.open(home.database_url(home.config()))
        rows = QuarantineStore(store.engine).recent(device_id, reason=reason, limit=limit)
    except (HomeError, StoreError) as exc:
        raise click.ClickException(str(exc)) from exc
    store.close()
    for r in rows:
        if as_json:
            item = {
                "device_id": r.device_id,
                "topic": r.topic,
                "reason": r.reason,
                "detail": r.detail,
                "received_at": r.received_at.isoformat(),
                "size_bytes": r.size_bytes,
                "payload_hex": r.payload.hex(),
            }
            click.echo(json.dumps(item, sort_keys=True))
        else:
            stamp = r.received_at.strftime("%Y-%m-%d %H:%M:%S")
            click.echo(f"{stamp}  {r.device_id or '-'}  {r.reason}  {r.detail}")
    if not rows and not as_json:
        click.echo("nothing quarantined", err=True)
