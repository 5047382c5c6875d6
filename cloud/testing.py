"""A real control plane for tests (ours and other packages'): in-process, on a free port.

Usage (sync test; the plane runs its own event loop in a background thread)::

    from cloud.testing import running_plane

    def test_agent_fetches(tmp_path):
        with running_plane(tmp_path / "plane") as plane:
            dev = plane.device("robot-1", labels={"site": "lab"})   # cert + key + registered
            with plane.channel(dev) as ch:                           # sync grpc.Channel, mTLS
                stub = device_pb2_grpc.DeviceServiceStub(ch)
                stub.GetDesiredState(device_pb2.GetDesiredStateRequest())
            admin = plane.operator()                                 # the "admin" operator
            plane.store.set_desired(["robot-1"], {...})              # the real Store API
            plane.publish(bundle_dir)                                # verify + TUF target

`plane.address` is ``127.0.0.1:<port>``; credential objects carry the paths of the
PEM files (``cert``, ``key``, ``ca``) for clients that take files (agent config, MQTT).
The embedded broker is off unless ``broker=True`` (then ``plane.broker_port``);
``ingest=True`` also runs MQTT ingest in the plane (against that broker or the
configured ``broker_url``), ``files_over_mqtt=True`` the MQTT file responder.
The plane's home is a real one (``cloud.home.init_home``): its model-signing key is
``plane.home.key_path("model-signing", private=True)``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from cloud.home import CloudHome, init_home
from cloud.pki import Credentials, fingerprint
from cloud.plane_services import PLANE_SERVICES
from cloud.server.app import ControlPlane
from cloud.store import BundleRecord, Store

__all__ = ["ClientCredentials", "RunningPlane", "running_plane"]

T = TypeVar("T")


@dataclass(frozen=True)
class ClientCredentials:
    id: str
    cert: Path
    key: Path
    ca: Path

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )


class RunningPlane:
    def __init__(self, control: ControlPlane, loop: asyncio.AbstractEventLoop) -> None:
        self.control = control
        self.loop = loop
        self.home: CloudHome = control.home

    @property
    def address(self) -> str:
        return self.control.address

    @property
    def port(self) -> int:
        return self.control.port

    @property
    def broker_port(self) -> int:
        assert self.control.broker is not None, "started without broker=True"
        return self.control.broker.port

    @property
    def metrics_port(self) -> int:
        return self.control.metrics.port

    @property
    def store(self) -> Store:
        assert self.control.plane is not None
        return self.control.plane.store

    def stop(self, grace: float = 5.0) -> None:
        """Graceful shutdown now (as SIGTERM does); leaving the `with` block is then a no-op."""
        if not self.control.closed and self.loop.is_running():
            self.run(self.control.stop(grace), timeout=grace + 30)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the plane's event loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _write(self, creds: Credentials, directory: Path, stem: str) -> ClientCredentials:
        crt, key = creds.write(directory, stem)
        return ClientCredentials(stem, crt, key, self.home.ca_cert)

    def device(
        self,
        device_id: str,
        labels: Mapping[str, str] | None = None,
        hardware_tags: tuple[str, ...] = (),
    ) -> ClientCredentials:
        """Issue a device certificate and register the device (what `cloud device add` does)."""
        from cloud.broker_reload import apply_device_added

        creds = self.home.load_ca().issue_device(device_id)
        self.store.add_device(device_id, fingerprint(creds.cert_pem), labels, hardware_tags)
        written = self._write(creds, self.home.devices, device_id)
        apply_device_added(self.home, device_id)  # the broker's ACL names each device
        return written

    def operator(self, name: str = "admin", role: str = "admin") -> ClientCredentials:
        crt, key = self.home.operator_paths(name)
        if crt.exists():
            return ClientCredentials(name, crt, key, self.home.ca_cert)
        return self._write(
            self.home.load_ca().issue_operator(name, role), self.home.operators, name
        )

    def channel(self, creds: ClientCredentials, **options: Any) -> grpc.Channel:
        opts = [(f"grpc.{k}", v) for k, v in options.items()]
        return grpc.secure_channel(self.address, creds.grpc_credentials(), options=opts)

    def aio_channel(self, creds: ClientCredentials) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(self.address, creds.grpc_credentials())

    def publish(self, source: str | Path, actor: str = "test") -> BundleRecord:
        """Publish a bundle directory or .efb as `edgeflux cloud publish` does."""
        from cloud.publish import publish_bundle

        return publish_bundle(self.home, self.store, source, actor=actor)


@contextlib.contextmanager
def running_plane(
    home_dir: str | Path,
    *,
    overrides: Mapping[str, Any] | None = None,
    broker: bool = False,
    factories: list[str] | None = None,
    metrics: bool = False,
    ingest: bool = False,
    files_over_mqtt: bool | None = False,
) -> Iterator[RunningPlane]:
    """Create a home at `home_dir` (unless one is there) and run a plane on free ports.

    `factories` None mounts what `edgeflux cloud up` mounts (`PLANE_SERVICES`).
    """
    home = CloudHome.at(home_dir)
    if not home.config_file.exists():
        home = init_home(home_dir)
    cfg: dict[str, Any] = {"grpc_port": 0, "listen_host": "127.0.0.1"}
    cfg.update(overrides or {})
    if metrics and "metrics_port" not in cfg:
        cfg["metrics_port"] = _free_port()
    if broker and "embedded_broker_port" not in cfg:
        cfg["embedded_broker_port"] = _free_port()
    services = PLANE_SERVICES if factories is None else factories
    control = ControlPlane(
        home, cfg, broker=broker, factories=services, ingest=ingest, files_over_mqtt=files_over_mqtt
    )

    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    def runner() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            try:
                await control.start()
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            await control.wait_closed()

        loop.run_until_complete(main())

    thread = threading.Thread(target=runner, name="edgeflux-test-plane", daemon=True)
    thread.start()
    if not started.wait(60):
        raise TimeoutError("control plane did not start within 60 s")
    if failure:
        thread.join(10)
        loop.close()
        raise failure[0]
    running = RunningPlane(control, loop)
    try:
        yield running
    finally:
        with contextlib.suppress(TimeoutError, concurrent.futures.CancelledError):
            running.stop(1.0)
        thread.join(30)
        if not thread.is_alive():
            loop.close()


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
