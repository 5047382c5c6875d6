"""`Plane`: what every servicer shares, and the extension point for other packages.

A package that adds a gRPC service to the control plane (attestation, router) writes
``register(server: grpc.aio.Server, plane: Plane) -> list[str]`` returning the full
service names it added (for reflection and health), and is listed in
``cloud.plane_services.PLANE_SERVICES``. A package may also put a handler object in
``plane.extensions`` (e.g. ``plane.extensions["rollouts"]``, used by the admin
service's rollout RPCs).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner

from cloud.home import CloudConfig, CloudHome
from cloud.server._metrics import Metrics
from cloud.server.auth import Authenticator
from cloud.store import DeviceRecord, Store
from cloud.store.windows import WindowStore
from cloud.tuf_repo import TufRepository
from cloud.windows import WindowBook, with_windows
from runtime.desired_state import PAYLOAD_TYPE, DesiredBundle, DesiredState

__all__ = ["DESIRED_STATE_PAYLOAD_TYPE", "FleetWatch", "Plane"]

log = logging.getLogger(__name__)
R = TypeVar("R")

DESIRED_STATE_PAYLOAD_TYPE = PAYLOAD_TYPE


class FleetWatch:
    """Fan-out of store device changes to `WatchFleet` streams (any thread → event loops)."""

    def __init__(self, queue_size: int = 10_000) -> None:
        self._subs: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue[str | None]]] = {}
        self._lock = threading.Lock()
        self._next = 0
        self.queue_size = queue_size

    def subscribe(self) -> tuple[int, asyncio.Queue[str | None]]:
        queue: asyncio.Queue[str | None] = asyncio.Queue(self.queue_size)
        with self._lock:
            self._next += 1
            self._subs[self._next] = (asyncio.get_running_loop(), queue)
            return self._next, queue

    def unsubscribe(self, token: int) -> None:
        with self._lock:
            self._subs.pop(token, None)

    def __len__(self) -> int:
        return len(self._subs)

    def publish(self, device_id: str) -> None:
        with self._lock:
            subs = list(self._subs.values())
        for loop, queue in subs:
            loop.call_soon_threadsafe(_offer, queue, device_id)

    def close(self) -> None:
        """End every stream (graceful shutdown)."""
        with self._lock:
            subs = list(self._subs.values())
        for loop, queue in subs:
            loop.call_soon_threadsafe(_offer, queue, None)


def _offer(queue: asyncio.Queue[str | None], item: str | None) -> None:
    try:
        queue.put_nowait(item)
    except asyncio.QueueFull:
        # A watcher that cannot keep up is cut off (it re-watches and gets a snapshot)
        # rather than making the plane buffer without bound.
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait("\x00overflow")


@dataclass
class Plane:
    home: CloudHome
    config: CloudConfig
    store: Store
    tuf: TufRepository
    auth: Authenticator
    director: CryptoSigner
    metrics: Metrics
    watch: FleetWatch = field(default_factory=FleetWatch)
    extensions: dict[str, Any] = field(default_factory=dict)
    windows: WindowBook | None = None
    """Maintenance windows per label, added to each device's desired state."""
    _desired_cache: dict[tuple[str, int, str], tuple[float, bytes]] = field(default_factory=dict)
    _touched: dict[str, float] = field(default_factory=dict)
    _background: set[asyncio.Task[None]] = field(default_factory=set)
    _download_slots: asyncio.Semaphore | None = None

    @classmethod
    def load(cls, home: CloudHome, config: CloudConfig, store: Store, metrics: Metrics) -> Plane:
        key = serialization.load_pem_private_key(
            home.key_path("director", private=True).read_bytes(), password=None
        )
        return cls(
            home=home,
            config=config,
            store=store,
            tuf=TufRepository(home.tuf),
            auth=Authenticator(store),
            director=CryptoSigner(key),
            metrics=metrics,
            windows=WindowBook(WindowStore(store.engine).all),
        )

    async def db(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run blocking store work off the event loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def db_read(self, fn: Callable[..., R], *args: Any) -> R:
        """A small indexed read on the hot path (per-call auth, the caller's device row).

        On SQLite (WAL: readers never wait for the writer) such a read costs less than
        the hop to a worker thread and back, so it runs inline; a networked database
        may stall, so it goes to a thread like every other store call.
        """
        if self.store.is_sqlite:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    def download_slots(self) -> asyncio.Semaphore:
        """Bounds the target reads served at once (gRPC streams and MQTT blocks together:
        `max_concurrent_downloads`); metadata is never queued behind them."""
        if self._download_slots is None:
            self._download_slots = asyncio.Semaphore(self.config.max_concurrent_downloads)
        return self._download_slots

    def touch_later(self, device_id: str, every_s: float = 30.0) -> None:
        """Record last seen at most every `every_s` per device, off the request path."""
        now = time.monotonic()
        if now - self._touched.get(device_id, -1e9) < every_s:
            return
        self._touched[device_id] = now
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(self._touch, device_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _touch(self, device_id: str) -> None:
        try:
            self.store.touch(device_id)
        except Exception as exc:  # best effort: presence also comes from MQTT
            log.debug("last-seen update for %s failed: %s", device_id, exc)

    # ------------------------------------------------------------------ desired state
    def desired_state(self, device: DeviceRecord) -> bytes:
        """The DSSE envelope (JSON bytes) of `device`'s desired state; cached per generation.

        Payload: a :class:`runtime.desired_state.DesiredState`, signed with the director
        key (``keys/director.pub`` in the home; flashed into robots' trust).
        """
        windows, windows_key = (
            self.windows.lookup(device.labels)
            if self.windows and device.desired_bundle
            else ((), "")
        )
        key = (device.id, device.desired_generation, windows_key)
        now = time.monotonic()
        ttl = self.config.desired_state_ttl_s
        cached = self._desired_cache.get(key)
        if cached is not None and now - cached[0] < ttl / 2:
            return cached[1]
        bundle = DesiredBundle.from_dict(device.desired_bundle)
        doc = DesiredState.issue(
            device.id,
            with_windows(bundle, windows) if bundle is not None else None,
            device.desired_generation,
            now=dt.datetime.now(dt.UTC),
            ttl_s=ttl,
        )
        body = doc.payload()
        env = Envelope(payload=body, payload_type=DESIRED_STATE_PAYLOAD_TYPE, signatures={})
        env.sign(self.director)
        out = json.dumps(env.to_dict(), sort_keys=True).encode()
        if len(self._desired_cache) > 100_000:
            self._desired_cache.clear()
        self._desired_cache[key] = (now, out)
        return out
