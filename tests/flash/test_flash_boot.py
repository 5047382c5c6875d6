"""The issue's "done when": a fresh directory becomes a robot root that installs offline
from its wheelhouse, boots the runtime with the flashed bundle (a gymnasium Pendulum
robot) and an agent that reports to the control plane and takes an update over mTLS.

Slow: it downloads the robot's wheelhouse (`pip download`, ~60 MB) and installs it
offline (`pip --no-index`) into the robot's own venv.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.ingest import Ingest, IngestSettings
from cloud.mqtt import CloudMqttSettings
from cloud.testing import running_plane
from edgeflux.cli import root
from runtime.control_client import RuntimeControlClient
from runtime.layout import RobotLayout
from tests.flash.conftest import make_pendulum_bundle
from tests.servers import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.services]
DEVICE = "robot-boot"


def _spawn(exe: Path, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    # Only the robot's own venv: no PYTHONPATH, no access to this checkout's packages.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.Popen(
        [str(exe), *args], stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd="/"
    )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


@pytest.fixture
def plane_with_ingest(tmp_path: Path) -> Iterator[object]:
    with running_plane(tmp_path / "plane", broker=True) as plane:
        ingest = Ingest(
            plane.store, CloudMqttSettings(port=plane.broker_port), IngestSettings(flush_ms=5)
        )
        ingest.start()
        try:
            yield plane
        finally:
            ingest.stop()


def test_flashed_root_installs_offline_boots_and_takes_an_update(
    plane_with_ingest: object, tmp_path: Path
) -> None:
    plane = plane_with_ingest
    home = plane.home  # type: ignore[attr-defined]
    plane.device(DEVICE, labels={"site": "lab"})  # type: ignore[attr-defined]
    key = home.key_path("model-signing", private=True)
    v1 = make_pendulum_bundle(tmp_path / "pendulum-1.0.0", key)
    robot = tmp_path / DEVICE
    result = CliRunner().invoke(
        root,
        [
            "flash",
            "--device",
            DEVICE,
            "--target",
            f"dir:{robot}",
            "--bundle",
            str(v1),
            "--home",
            str(home.root),
            "--cloud",
            plane.address,  # type: ignore[attr-defined]
            "--broker",
            f"mqtt://127.0.0.1:{plane.broker_port}",  # type: ignore[attr-defined]
            "--extras",
            "device,sim",
            "--wheel-cache",
            str(tmp_path / "wheels"),
            "--adapter",
            "gym",
            "--adapter-option",
            "env=Pendulum-v1",
            "--runtime-option",
            "warmup_runs=2",
            "--runtime-option",
            "health_max_fallback_rate=0.5",
            "--runtime-option",
            "health_max_miss_rate=0.5",
            "--agent-option",
            "telemetry_period_s=0.5",
            "--agent-option",
            "sample_period_s=0.25",
            "--agent-option",
            "hint_min_interval_s=0",
            "--agent-option",
            "shadow_ticks=20",
            "--agent-option",
            "health_window_ticks=20",
            "--agent-option",
            "shadow_divergence_max=10",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["device_id"] == DEVICE

    install = subprocess.run(
        ["sh", str(robot / "opt/edgeflux/install.sh")], capture_output=True, text=True, timeout=600
    )
    assert install.returncode == 0, install.stderr
    exe = robot / "opt/edgeflux/venv/bin/edgeflux"
    probe = subprocess.run(
        [str(exe.parent / "python"), "-c", "import runtime, fleet; print(runtime.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    assert str(robot / "opt/edgeflux/venv") in probe.stdout  # not this checkout

    log = tmp_path / "robot.log"
    layout = RobotLayout.at(robot)
    procs = [_spawn(exe, ["runtime", "run", "--root", str(robot)], log)]
    try:
        wait_until(
            lambda: layout.runtime_socket.exists() or procs[0].poll() is not None,
            90,
            "the runtime socket",
        )
        assert procs[0].poll() is None, log.read_text()
        procs.append(_spawn(exe, ["agent", "run", "--root", str(robot)], log))

        store = plane.store  # type: ignore[attr-defined]

        def reported() -> bool:
            device = store.get_device(DEVICE)
            return bool(device.online and device.last_seen is not None)

        try:
            wait_until(reported, 60, "the robot online in the control plane's store")
        except TimeoutError:
            pytest.fail(log.read_text()[-5000:])

        v2 = make_pendulum_bundle(
            tmp_path / "pendulum-1.1.0", key, version="1.1.0", sequence=2, seed=0
        )
        push = CliRunner().invoke(
            root,
            [
                "cloud",
                "push",
                str(v2),
                "--device",
                DEVICE,
                "--home",
                str(home.root),
                "--broker-url",
                f"mqtt://127.0.0.1:{plane.broker_port}",  # type: ignore[attr-defined]
            ],
        )
        assert push.exit_code == 0, push.output

        def committed() -> bool:
            with RuntimeControlClient(layout.runtime_socket, 5) as rt:
                return int(rt.status().anti_rollback.get("pendulum", 0)) == 2

        try:
            wait_until(committed, 120, "v1.1.0 committed on the flashed robot")
        except TimeoutError:
            pytest.fail(log.read_text()[-8000:])
    finally:
        _stop(list(reversed(procs)))
