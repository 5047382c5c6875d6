"""Real robots for plane tests: a robot root, and its runtime and agent as processes."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cloud.home import CloudHome
from cloud.pki import fingerprint
from cloud.store import Store
from runtime.layout import RobotLayout
from runtime.trust import TrustStore
from tests.fleet.test_agent_e2e import Robot, _spawn
from tests.servers import wait_until

__all__ = ["make_root", "running_robot"]


def make_root(
    home: CloudHome,
    store: Store,
    root: Path,
    device: str,
    target: str,
    mqtt_port: int,
    **agent: object,
) -> RobotLayout:
    """Register `device` and write a robot root whose agent talks to `target` (plain MQTT
    on `mqtt_port`); `agent` adds or overrides agent settings."""
    layout = RobotLayout.at(root)
    layout.ensure()
    creds = home.load_ca().issue_device(device)
    store.add_device(device, fingerprint(creds.cert_pem), {"site": "lab"}, ())
    creds.write(layout.identity, "device")
    shutil.copy(home.ca_cert, layout.trust / "ca.crt")
    shutil.copy(home.key_path("director"), layout.trust / "director.pub")
    shutil.copy(home.tuf / "metadata" / "1.root.json", layout.trust / "tuf-root.json")
    TrustStore(layout.trust).add("models", home.key_path("model-signing").read_bytes())
    layout.runtime_config.write_text(
        '[runtime]\nadapter = "null"\nadapter_options = { obs_dim = 3, value = 0.5 }\n'
        "warmup_runs = 2\nhealth_max_fallback_rate = 0.5\nhealth_max_miss_rate = 0.5\n"
    )
    settings: dict[str, object] = {
        "device_id": device,
        "mqtt_port": mqtt_port,
        "mqtt_tls": False,
        "grpc_target": target,
        "desired_state_poll_s": 0.5,
        "telemetry_period_s": 0.5,
        "hint_min_interval_s": 0.0,
        "shadow_ticks": 20,
        "health_window_ticks": 30,
        "reconnect_base_s": 0.1,
        "reconnect_cap_s": 1.0,
        **agent,
    }
    lines = [f"{k} = {_toml(v)}" for k, v in settings.items()]
    layout.agent_config.write_text("[agent]\n" + "\n".join(lines) + "\n")
    return layout


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


@contextmanager
def running_robot(root: Path, device: str, bundle: Path, log: Path) -> Iterator[Robot]:
    """`edgeflux runtime run` on `bundle`, then `edgeflux agent run`; stopped on exit."""
    rt = _spawn(["runtime", "run", "--root", str(root), "--bundle", str(bundle)], log)
    agent = None
    try:
        sock = RobotLayout.at(root).runtime_socket
        wait_until(lambda: sock.exists() or rt.poll() is not None, 90, f"{device}'s runtime")
        assert rt.poll() is None, log.read_text()[-3000:]
        agent = _spawn(["agent", "run", "--root", str(root)], log)
        yield Robot(device, root, rt, agent, log)
    finally:
        for p in (agent, rt):
            if p is not None and p.poll() is None:
                p.terminate()
        for p in (agent, rt):
            if p is not None:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
