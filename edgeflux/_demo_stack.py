"""The demo's running stack: its directories, ports and processes, and the plane's
admin API as an operator sees it (the fleet table, a robot's runtime status)."""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgeflux._demo_config import DemoOptions, DemoSummary
from edgeflux._processes import ProcessGroup, edgeflux_command

__all__ = ["DemoStack", "json_out", "live"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def json_out(raw: str) -> dict[str, Any]:
    """The JSON document a `--json` command printed (pretty-printed or on one line)."""
    text = raw.strip()
    start = text.find("{")
    if start < 0:
        raise ValueError(f"expected JSON output, got: {text[:200]!r}")
    doc = json.loads(text[start:])
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object")
    return doc


@contextmanager
def live(render: Callable[[], Any]) -> Iterator[Callable[[], None]]:
    from rich.live import Live

    with Live(render(), refresh_per_second=4) as live:
        yield lambda: live.update(render())


class DemoStack:
    """The running stack: where things live, its processes, the plane's admin API."""

    def __init__(self, opts: DemoOptions, procs: ProcessGroup, echo: Callable[[str], None]):
        self.opts = opts
        self.procs = procs
        self.echo = echo
        self.summary = DemoSummary()
        w = opts.workdir
        self.home = w / "plane"
        self.bundles = w / "bundles"
        self.cache = w / "cache"
        self.robots_dir = w / "robots"
        self.grpc_port = _free_port()
        self.broker_port = _free_port()
        self._admin: Any = None

    # ---------------------------------------------------------------- helpers
    def cli(self, name: str, *args: str, timeout_s: float = 120, ok: Collection[int] = (0,)) -> str:
        return self.procs.run(name, edgeflux_command(*args), timeout_s, ok)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def broker_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.broker_port}"

    def admin(self) -> Any:
        """FleetAdminService stub with the first operator's (admin) certificate."""
        if self._admin is None:
            import grpc

            from protos import admin_pb2_grpc

            crt = self.home / "pki" / "operators" / "admin.crt"
            key = self.home / "pki" / "operators" / "admin.key"
            ca = self.home / "pki" / "ca.crt"
            creds = grpc.ssl_channel_credentials(
                root_certificates=ca.read_bytes(),
                private_key=key.read_bytes(),
                certificate_chain=crt.read_bytes(),
            )
            channel = grpc.secure_channel(self.address, creds)
            self._admin = admin_pb2_grpc.FleetAdminServiceStub(channel)  # type: ignore[no-untyped-call]
        return self._admin

    def devices(self) -> dict[str, Any]:
        from protos import admin_pb2

        reply = self.admin().ListDevices(
            admin_pb2.ListDevicesRequest(label_selector="fleet=demo"), timeout=5
        )
        return {d.id: d for d in reply.devices}

    # ---------------------------------------------------------------- stages
    def reset(self) -> str:
        w = self.opts.workdir
        if self.opts.fresh and w.exists():
            shutil.rmtree(w)
        for d in (self.home, self.bundles, self.robots_dir, w / "logs", w / "campaigns"):
            if d.exists():
                shutil.rmtree(d)
        w.mkdir(parents=True, exist_ok=True)
        cached = sorted(p.name for p in self.cache.glob("*/edgeflux.json"))
        return f"{w} ready" + (f"; {len(cached)} cached policies" if cached else "")

    def cloud_up(self) -> str:
        self.cli("cloud-init", "cloud", "init", str(self.home))
        self.procs.env["EDGEFLUX_CLOUD_EMBEDDED_BROKER_PORT"] = str(self.broker_port)
        plane = self.procs.start(
            "cloud-up",
            edgeflux_command(
                "cloud", "up", "--home", str(self.home), "--port", str(self.grpc_port), "--broker"
            ),
        )
        self.procs.wait_for(
            lambda: _port_open(self.grpc_port) and _port_open(self.broker_port),
            60,
            "the control plane and its embedded broker",
            watch=[plane],
        )
        # `cloud up` runs MQTT ingest in-process when it starts the broker.
        self.procs.wait_for(lambda: self.devices() is not None, 30, "the admin API", watch=[plane])
        self.summary.endpoints = {
            "grpc": self.address,
            "mqtt": self.broker_url,
            "home": str(self.home),
        }
        return f"gRPC (mTLS) on {self.address}, embedded MQTT broker on {self.broker_url}"

    def _signing_key(self) -> Path:
        return self.home / "keys" / "model-signing.key"

    def live_telemetry(self, seconds: float) -> str:
        from rich.live import Live

        end = time.monotonic() + seconds
        with Live(self._fleet_table(), refresh_per_second=4, transient=False) as live:
            while time.monotonic() < end:
                time.sleep(0.5)
                live.update(self._fleet_table())
        ticks = {k: d.health.loop_p99_ms for k, d in self.devices().items()}
        return "loop p99 (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in ticks.items())

    def _fleet_table(self) -> Any:
        from rich.table import Table

        table = Table(title="fleet (admin API, refreshed live)")
        for col in (
            "device",
            "online",
            "bundle",
            "update",
            "loop p99 ms",
            "misses",
            "interventions",
            "cpu %",
        ):
            table.add_column(col)
        try:
            devices = self.devices()
        except Exception as exc:  # shown, not fatal: the plane may be busy
            table.caption = f"admin API unavailable: {exc}"
            return table
        for dev_id in sorted(devices):
            d = devices[dev_id]
            state = d.update_state + (f" ({d.update_reason})" if d.update_reason else "")
            table.add_row(
                dev_id,
                "yes" if d.online else "no",
                d.active_bundle.version or "-",
                state or "-",
                f"{d.health.loop_p99_ms:.2f}",
                f"{d.health.deadline_miss_rate:.3%}",
                str(d.health.safety_interventions),
                f"{d.health.cpu_percent:.0f}",
            )
        return table

    def _runtime_status(self, robot: str) -> Any:
        from runtime.control_client import RuntimeControlClient
        from runtime.layout import RobotLayout

        sock = RobotLayout.at(self.robots_dir / robot).runtime_socket
        with RuntimeControlClient(sock, 5) as rt:
            return rt.status()
