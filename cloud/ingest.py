"""MQTT ingest: device telemetry, events and presence into the store.

Several ingest processes may run at once: with ``subscription="shared"`` they subscribe
through ``$share/edgeflux-ingest/edgeflux/v1/devices/+/<kind>`` and the broker splits
the messages between them; with ``"exclusive"`` (the default: lossless across Mosquitto
restarts, see :class:`IngestSettings`) each holds a persistent subscription of its own
and the store's unique key drops what a second replica also wrote. Each message is

1. validated before use (:func:`decode`): well-formed topic, size cap, a protobuf that
   parses, finite numbers, and a payload ``device_id`` equal to the topic's device —
   the broker ACL already ties the topic to the certificate CN, so this closes the
   topic ↔ payload ↔ certificate chain. Anything else is dropped, counted by reason
   and logged; it never reaches the store and never stops the loop;
2. written in batches by one writer thread, de-duplicated by (device, sequence) —
   the store's unique key makes a QoS 1 redelivery or a spool replay a no-op;
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
from typing import Any, Literal

import click
from google.protobuf.message import DecodeError

from cloud.mqtt import PREFIX, SHARE_GROUP, CloudMqtt, CloudMqttSettings, Delivery, parse_topic
from cloud.store import ConflictError, EventRecord, Store, StoreUnavailable, TelemetryRecord
from cloud.store.ingest_batch import record_telemetry_many
from protos import telemetry_pb2

__all__ = [
    "Decoded",
    "Dropped",
    "Ingest",
    "IngestSettings",
    "decode",
    "exclusive_filters",
    "ingest_cmd",
    "shared_filters",
]

log = logging.getLogger(__name__)

MAX_POINTS = 10_000


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
    subscription: Literal["exclusive", "shared"] = "exclusive"
    """``shared``: ``$share/edgeflux-ingest/...`` — replicas split the load. ``exclusive``:
    a plain persistent subscription — every replica sees everything (the store drops
    the duplicates). Mosquitto 2.0 does not restore shared subscriptions from its
    persistence file, so messages published after a broker restart and before a shared
    subscriber re-subscribes are lost; exclusive loses nothing (docs/architecture.md)."""


@dataclass(frozen=True)
class Decoded:
    kind: str
    device_id: str
    sequence: int
    telemetry: list[TelemetryRecord] | None = None
    event: EventRecord | None = None
    online: bool | None = None
    at: dt.datetime | None = None
    runtime_version: str = ""


@dataclass(frozen=True)
class Dropped:
    reason: str
    detail: str


def shared_filters(group: str = SHARE_GROUP) -> list[str]:
    return [f"$share/{group}/{PREFIX}/+/{k}" for k in ("telemetry", "events", "state")]


def exclusive_filters() -> list[str]:
    return [f"{PREFIX}/+/{k}" for k in ("telemetry", "events", "state")]


def _ts(stamp: Any, default: dt.datetime) -> dt.datetime:
    if stamp.seconds == 0 and stamp.nanos == 0:
        return default
    return dt.datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, dt.UTC)


def _bundle(ref: Any) -> dict[str, Any] | None:
    if not ref.name:
        return None
    return {
        "name": ref.name,
        "version": ref.version,
        "sequence": ref.sequence,
        "policy_sha256": ref.policy_sha256,
    }


def decode(
    topic_name: str, payload: bytes, now: dt.datetime, max_bytes: int = 256 * 1024
) -> Decoded | Dropped:
    """Validate one MQTT message; pure (no I/O), so every malformed case is unit-tested."""
    parsed = parse_topic(topic_name)
    if parsed is None:
        return Dropped("bad_topic", f"topic {topic_name[:200]!r} is not an EdgeFlux device topic")
    device, kind = parsed
    if len(payload) > max_bytes:
        return Dropped("oversized", f"{kind} from {device}: {len(payload)} bytes > {max_bytes}")
    if kind == "updates":
        return Dropped("bad_topic", f"ingest does not consume {topic_name}")
    msg_type: Any = {
        "telemetry": telemetry_pb2.TelemetryBatch,
        "events": telemetry_pb2.Event,
        "state": telemetry_pb2.DeviceState,
    }[kind]
    try:
        msg = msg_type.FromString(payload)
    except (DecodeError, ValueError) as exc:
        return Dropped("malformed", f"{kind} from {device}: not a {msg_type.__name__}: {exc}")
    if msg.device_id != device:
        return Dropped(
            "device_mismatch",
            f"{kind} on {device}'s topic claims device_id {msg.device_id[:64]!r}",
        )
    if kind == "state":
        return Decoded(
            kind,
            device,
            0,
            online=msg.online,
            at=_ts(msg.at, now),
            runtime_version=msg.runtime_version,
        )
    if msg.sequence == 0:
        return Dropped("malformed", f"{kind} from {device} has no sequence number")
    if kind == "events":
        if not msg.kind:
            return Dropped("malformed", f"event from {device} has no kind")
        ev = EventRecord(
            device_id=device,
            sequence=msg.sequence,
            at=_ts(msg.at, now),
            kind=msg.kind[:32],
            state=msg.state[:32],
            reason_code=msg.reason_code[:64],
            detail=msg.detail[:4000],
            bundle=_bundle(msg.bundle),
        )
        return Decoded(kind, device, msg.sequence, event=ev)
    if len(msg.points) > MAX_POINTS:
        return Dropped("oversized", f"telemetry from {device}: {len(msg.points)} points")
    points = []
    for p in msg.points:
        numbers = (
            p.loop_p50_ms,
            p.loop_p99_ms,
            p.loop_p999_ms,
            p.cpu_percent,
            p.memory_percent,
            p.disk_free_bytes,
            p.temperature_c,
        )
        if not all(math.isfinite(x) for x in numbers):
            return Dropped("malformed", f"telemetry from {device} has a non-finite number")
        interventions = sum(p.interventions.values())
        points.append(
            TelemetryRecord(
                at=_ts(p.at, now),
                loop_p50_ms=p.loop_p50_ms,
                loop_p99_ms=p.loop_p99_ms,
                deadline_miss_rate=(p.deadline_misses / p.ticks) if p.ticks else 0.0,
                safety_interventions=interventions,
                cpu_percent=p.cpu_percent,
                memory_percent=p.memory_percent,
                temperature_c=p.temperature_c,
                extra={
                    "loop_p999_ms": p.loop_p999_ms,
                    "ticks": p.ticks,
                    "deadline_misses": p.deadline_misses,
                    "interventions": dict(p.interventions),
                    "disk_free_bytes": p.disk_free_bytes,
                },
                update_state=p.update_state[:32],
                active_bundle=_bundle(p.active_bundle),
            )
        )
    return Decoded(kind, device, msg.sequence, telemetry=points)


class Ingest:
    """Subscribes, validates, de-duplicates, writes in batches, then acknowledges."""

    def __init__(
        self,
        store: Store,
        mqtt: CloudMqttSettings,
        settings: IngestSettings | None = None,
        *,
        on_committed: Callable[[Sequence[Decoded], float], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or IngestSettings()
        self.counters: Counter[str] = Counter()
        self._on_committed = on_committed
        self._queue: queue.Queue[tuple[Delivery, dt.datetime]] = queue.Queue()
        self._seen: OrderedDict[tuple[str, str, int], None] = OrderedDict()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._mqtt = CloudMqtt(mqtt, on_message=self._enqueue, manual_ack=True)
        shared = self.settings.subscription == "shared"
        for f in shared_filters() if shared else exclusive_filters():
            self._mqtt.subscribe(f)

    def start(self) -> None:
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self._writer.start()
        self._mqtt.start()

    def stop(self) -> None:
        self._mqtt.stop()
        self._stop.set()
        if self._writer is not None:
            self._writer.join(10)

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
                    # Not acknowledged: the broker redelivers after a reconnect. The loop
                    # itself must survive whatever one batch does.
                    self.counters["errors"] += 1
                    log.exception("ingest failed on a batch of %d messages", len(batch))
                    break

    def _process(self, batch: list[tuple[Delivery, dt.datetime]]) -> None:
        done: list[Decoded] = []
        telemetry: list[tuple[Decoded, dt.datetime]] = []
        for delivery, received in batch:
            result = decode(
                delivery.topic, delivery.payload, received, self.settings.max_payload_bytes
            )
            if isinstance(result, Dropped):
                self.counters[f"dropped.{result.reason}"] += 1
                log.warning("ingest dropped a message (%s): %s", result.reason, result.detail)
                continue
            if result.kind == "telemetry":
                key = (result.device_id, result.kind, result.sequence)
                if key in self._seen:
                    self.counters["skipped"] += 1
                else:
                    telemetry.append((result, received))
            elif self._write(result, received):
                done.append(result)
        done += self._write_telemetry(telemetry)
        # Every write of this batch committed: only now may the broker forget them.
        for delivery, _ in batch:
            delivery.ack()
        if done and self._on_committed is not None:
            self._on_committed(done, time.time())

    def _remember(self, key: tuple[str, str, int]) -> None:
        self._seen[key] = None
        if len(self._seen) > self.settings.dedup_cache:
            self._seen.popitem(last=False)

    def _write_telemetry(self, items: list[tuple[Decoded, dt.datetime]]) -> list[Decoded]:
        """One transaction for all telemetry of the batch; per batch if replicas collide."""
        if not items:
            return []
        writes = [(m.device_id, m.sequence, m.telemetry or [], r) for m, r in items]
        try:
            stored = record_telemetry_many(self.store, writes)
        except ConflictError:
            self.counters["batch_conflicts"] += 1
            stored = [
                self.store.record_telemetry(m.device_id, m.sequence, m.telemetry or [], r)
                for m, r in items
            ]
        out = []
        for (m, _), ok in zip(items, stored, strict=True):
            self._remember((m.device_id, m.kind, m.sequence))
            # False: a duplicate (device, sequence), or a device unknown to / revoked by
            # the store.
            self.counters["stored" if ok else "skipped"] += 1
            if ok:
                out.append(m)
        return out

    def _write(self, m: Decoded, received: dt.datetime) -> bool:
        if m.kind == "state":
            assert m.online is not None
            self.store.set_online(m.device_id, m.online, m.at, m.runtime_version or None)
            self.counters["state"] += 1
            return True
        key = (m.device_id, m.kind, m.sequence)
        if key in self._seen:
            self.counters["skipped"] += 1
            return False
        assert m.event is not None
        stored = self.store.record_event(m.event)
        self._remember(key)
        self.counters["stored" if stored else "skipped"] += 1
        return stored


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
@click.option("--client-id", default="edgeflux-ingest-1", show_default=True)
@click.option("--shared", is_flag=True, help="Split the load with other --shared replicas.")
def ingest_cmd(home_dir: str, broker_url: str | None, client_id: str, shared: bool) -> None:
    """Run MQTT ingest (telemetry, events, presence → store) until SIGTERM / Ctrl-C."""
    import dataclasses
    import signal

    from cloud.home import CloudHome, HomeError
    from cloud.mqtt import CloudMqttError
    from cloud.push import PushError, broker_settings
    from cloud.store import StoreError

    try:
        home = CloudHome.at(home_dir)
        home.check()
        store = Store.open(home.database_url(home.config()))
    except (HomeError, StoreError) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        mqtt = dataclasses.replace(broker_settings(home, broker_url), client_id=client_id)
    except PushError as exc:
        raise click.ClickException(str(exc)) from exc
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
