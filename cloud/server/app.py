"""The control plane's composition root: store + TUF + gRPC (mTLS) + metrics + broker.

Usage::

    plane = ControlPlane(CloudHome.at("./plane"))
    await plane.start()            # binds, migrates, starts the timestamp re-signer
    print(plane.address)           # "127.0.0.1:7443"
    await plane.wait_closed()      # until stop() (SIGTERM/SIGINT in `edgeflux cloud up`)

Services: DeviceService, FleetAdminService, grpc.health.v1.Health and server
reflection, plus the services named in `factories` (`edgeflux cloud up` passes
`cloud.plane_services.PLANE_SERVICES`). Each factory is ``"module:function"`` with
``register(server, plane) -> list[str]`` (service names); a factory whose module is
not installed is skipped with one log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import importlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cloud.broker import EmbeddedBroker
from cloud.home import CloudConfig, CloudHome
from cloud.server import admin_service, device_service
from cloud.server._metrics import Metrics
from cloud.server.plane import Plane
from cloud.store import Store, StoreError

__all__ = ["ControlPlane", "Plane", "PlaneStartError"]

if TYPE_CHECKING:
    from cloud.ingest import Ingest
    from cloud.server.file_responder import FileResponder

log = logging.getLogger(__name__)


class PlaneStartError(Exception):
    """The plane could not start (database down, port taken, bad home); nothing is left running."""


def _load_factory(spec: str) -> Callable[[grpc.aio.Server, Plane], list[str]] | None:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            log.info("service %s not installed yet (%s); skipped", spec, exc.name)
            return None
        raise
    fn = getattr(module, attr, None)
    if fn is None:
        log.info("service %s has no %s(); skipped", module_name, attr)
        return None
    return fn  # type: ignore[no-any-return]


class ControlPlane:
    """One control-plane process. `overrides` are CloudConfig fields (CLI flags)."""

    def __init__(
        self,
        home: CloudHome,
        overrides: dict[str, Any] | None = None,
        *,
        broker: bool | None = None,
        factories: Sequence[str] = (),
        ingest: bool | None = False,
        files_over_mqtt: bool | None = False,
    ) -> None:
        """`ingest`, `files_over_mqtt` (the MQTT file responder): None = whenever there
        is a broker (what `edgeflux cloud up` does)."""
        self.home = home
        self.config: CloudConfig = home.config(overrides)
        self._want_broker = broker
        self._want_ingest = ingest
        self.ingest: Ingest | None = None
        self._want_files = files_over_mqtt
        self.files: FileResponder | None = None
        self._factories = list(factories)
        self.metrics = Metrics()
        self.plane: Plane | None = None
        self.server: grpc.aio.Server | None = None
        self.broker: EmbeddedBroker | None = None
        self.port = 0
        self.services: list[str] = []
        self._health: health.aio.HealthServicer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = asyncio.Event()

    @property
    def address(self) -> str:
        return f"{self.config.listen_host}:{self.port}"

    def _credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.home.server_key.read_bytes(), self.home.server_cert.read_bytes())],
            root_certificates=self.home.ca_pem(),
            require_client_auth=True,
        )

    async def start(self) -> None:
        cfg = self.config
        url = self.home.database_url(cfg)
        try:
            store = await asyncio.to_thread(Store.open, url)
        except StoreError as exc:
            raise PlaneStartError(f"cannot start: {exc}") from exc
        try:
            await self._start(store)
        except BaseException:
            await self.stop(0)
            raise

    async def _start(self, store: Store) -> None:
        cfg = self.config
        self._check_campaign_executor()
        plane = Plane.load(self.home, cfg, store, self.metrics)
        self.plane = plane
        server = grpc.aio.server(
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes),
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
        )
        self.server = server
        names = device_service.register(server, plane) + admin_service.register(server, plane)
        for spec in self._factories:
            factory = _load_factory(spec)
            if factory is not None:
                names += factory(server, plane)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names += [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        names.append(reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        self.services = names
        try:
            self.port = server.add_secure_port(
                f"{cfg.listen_host}:{cfg.grpc_port}", self._credentials()
            )
        except RuntimeError as exc:
            raise PlaneStartError(
                f"cannot listen on {cfg.listen_host}:{cfg.grpc_port}: {exc} (port in use?)"
            ) from exc
        await server.start()
        for name in names:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        if cfg.metrics_port:
            try:
                self.metrics.serve(cfg.listen_host, cfg.metrics_port)
            except OSError as exc:
                raise PlaneStartError(
                    f"cannot serve metrics on {cfg.listen_host}:{cfg.metrics_port}: {exc}"
                ) from exc
        want_broker = cfg.broker_url is None if self._want_broker is None else self._want_broker
        if want_broker:
            broker = EmbeddedBroker(cfg.listen_host, cfg.embedded_broker_port)
            try:
                await broker.start()
            except Exception as exc:  # amqtt raises its own types for a taken port
                raise PlaneStartError(
                    f"cannot start the embedded MQTT broker on {cfg.listen_host}:"
                    f"{cfg.embedded_broker_port}: {exc} (set embedded_broker_port, or "
                    "broker_url for a real broker)"
                ) from exc
            self.broker = broker
        elif cfg.broker_url:
            log.info("fleet broker: %s", cfg.broker_url)
        want_ingest = self._want_ingest
        if want_ingest is None:  # auto: whenever there is a broker to ingest from
            want_ingest = self.broker is not None or bool(cfg.broker_url)
        if want_ingest:
            await asyncio.to_thread(self._start_ingest, store)
        want_files = self._want_files
        if want_files is None:
            want_files = self.broker is not None or bool(cfg.broker_url)
        if want_files:
            try:
                await self._start_files(plane)
            except PlaneStartError as exc:
                if self._want_files:  # asked for by name: the plane does not start
                    raise
                # A fallback path: the plane still serves gRPC (and ingest) without it.
                log.error("%s; robots without gRPC cannot update until it runs", exc)
        self._tasks.append(asyncio.create_task(self._refresh_timestamp()))
        self._tasks.append(asyncio.create_task(self._poll_changes()))
        self._tasks.append(asyncio.create_task(self._retention()))
        log.info(
            "control plane %s serving on %s (mTLS; %s)",
            self.home.root,
            self.address,
            store.url,
        )

    def _check_campaign_executor(self) -> None:
        """`campaign_executor` parsed as RunParityCampaign will parse it (a bad value or a
        missing Ray stops the start here, not the first campaign)."""
        from cloud.attest.executors import ExecutorError, parse_executor

        try:
            parse_executor(self.config.campaign_executor, 1, name="campaign_executor")
        except ExecutorError as exc:
            raise PlaneStartError(
                f"cannot start: {self.home.config_file} [cloud] {exc} "
                "(or EDGEFLUX_CLOUD_CAMPAIGN_EXECUTOR)"
            ) from exc

    def _start_ingest(self, store: Store) -> None:
        """MQTT ingest (cloud.ingest, the fleet package's) in this process, as the plane."""
        from cloud.home import INGEST_IDENTITY
        from cloud.ingest import Ingest
        from cloud.mqtt import CloudMqttError, CloudMqttSettings
        from cloud.push import PushError, broker_settings

        if self.broker is not None:  # our own dev broker: plain MQTT on loopback
            settings = CloudMqttSettings(host=self.broker.host, port=self.broker.port)
        else:
            try:
                settings = broker_settings(self.home, self.config.broker_url, INGEST_IDENTITY)
            except PushError as exc:
                raise PlaneStartError(str(exc)) from exc
        # The broker makes the certificate's name the client id (use_username_as_clientid).
        settings = dataclasses.replace(settings, client_id=INGEST_IDENTITY)
        dropped = self.metrics.ingest_dropped
        ingest = Ingest(
            store,
            settings,
            on_drop=lambda reason: dropped.labels(reason).inc(),
            mqtt5=self.broker is None,  # the embedded broker speaks 3.1.1 only
        )
        try:
            ingest.start()
        except CloudMqttError as exc:
            raise PlaneStartError(
                f"cannot start MQTT ingest against {settings.host}:{settings.port}: {exc}"
            ) from exc
        self.ingest = ingest
        log.info("MQTT ingest connected to %s:%d", settings.host, settings.port)

    async def _start_files(self, plane: Plane) -> None:
        """The MQTT file responder (robots without gRPC), as its own identity."""
        from cloud.home import FILES_IDENTITY
        from cloud.mqtt import CloudMqttError, CloudMqttSettings
        from cloud.push import PushError, broker_settings
        from cloud.server.file_responder import FileResponder

        if self.broker is not None:
            settings = CloudMqttSettings(host=self.broker.host, port=self.broker.port)
        else:
            try:
                settings = broker_settings(self.home, self.config.broker_url, FILES_IDENTITY)
            except PushError as exc:
                raise PlaneStartError(str(exc)) from exc
        settings = dataclasses.replace(settings, client_id=FILES_IDENTITY)
        responder = FileResponder(plane, settings)
        try:
            await responder.start()
        except CloudMqttError as exc:
            raise PlaneStartError(
                f"cannot start the MQTT file responder against {settings.host}:"
                f"{settings.port}: {exc}"
            ) from exc
        self.files = responder

    async def _refresh_timestamp(self) -> None:
        """Re-sign the TUF timestamp so it never expires while the plane runs."""
        assert self.plane is not None
        cfg = self.config
        while True:
            delay = float(cfg.timestamp_refresh_s)
            try:
                # Decided under the TUF lock, on the timestamp as it is then: replicas
                # sharing the home re-sign it once between them.
                expires, resigned = await asyncio.to_thread(
                    self.plane.tuf.refresh_timestamp,
                    cfg.timestamp_expiry_s,
                    only_if_older_than=cfg.timestamp_refresh_s,
                )
                if resigned:
                    log.info("TUF timestamp re-signed; expires %s", expires.isoformat())
                else:
                    age = cfg.timestamp_expiry_s - (expires - _utcnow()).total_seconds()
                    delay = max(0.5, cfg.timestamp_refresh_s - age)
                self.metrics.timestamp_expiry.set(expires.timestamp())
            except Exception:
                log.exception("TUF timestamp refresh failed; retrying")
                delay = min(delay, 30.0)
            await asyncio.sleep(delay)

    async def _retention(self) -> None:
        """Telemetry day partitions made ahead and `telemetry_retention_days` applied
        (at start, then hourly; on PostgreSQL by the lease holder among the replicas)."""
        from cloud.telemetry_retention import run_upkeep

        assert self.plane is not None
        await run_upkeep(self.plane.store, self.config.telemetry_retention_days)

    async def _poll_changes(self) -> None:
        """Feed WatchFleet with device changes written by any process (ingest, CLI, replicas).

        One mechanism for every writer, so each change is announced once. Rows are
        re-read with a small overlap, because a transaction can commit after a later one
        that stamped a newer `updated_at`; (id, updated_at) pairs already announced are
        skipped.
        """
        assert self.plane is not None
        plane = self.plane
        overlap = dt.timedelta(seconds=5)
        mark = _utcnow()
        announced: dict[tuple[str, dt.datetime], None] = {}
        while True:
            await asyncio.sleep(self.config.watch_poll_s)
            if not len(plane.watch):
                mark = _utcnow()
                announced.clear()
                continue
            try:
                rows = await plane.db(plane.store.devices_changed_since, mark - overlap)
            except Exception as exc:  # the store may be down: WatchFleet just waits
                log.debug("change poll failed: %s", exc)
                continue
            for device_id, updated in rows:
                if (device_id, updated) not in announced:
                    announced[(device_id, updated)] = None
                    plane.watch.publish(device_id)
                mark = max(mark, updated)
            horizon = mark - overlap
            for key in [k for k in announced if k[1] < horizon]:
                del announced[key]

    async def stop(self, grace: float = 5.0) -> None:
        """Graceful shutdown: NOT_SERVING, end watch streams, finish in-flight calls."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._health is not None:
            with contextlib.suppress(Exception):
                await self._health.enter_graceful_shutdown()
        if self.plane is not None:
            self.plane.watch.close()
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None
        router = self.plane.extensions.get("router") if self.plane is not None else None
        if router is not None:  # settles calls in flight, signs the audit log's final head
            await router.close()
        if self.files is not None:
            await self.files.stop()
            self.files = None
        if self.ingest is not None:
            await asyncio.to_thread(self.ingest.stop)
            self.ingest = None
        if self.broker is not None:
            await self.broker.stop()
            self.broker = None
        self.metrics.close()
        if self.plane is not None:
            self.plane.store.close()
            self.plane = None
        self._closed.set()

    @property
    def closed(self) -> bool:
        """True once `stop` has finished."""
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
