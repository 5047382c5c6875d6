"""`flash` picks extras that fit the adapter (or refuses before writing); the installer's
stamp names the extras, so a reflash converges; `edgeflux robot start` runs a flashed
`dir:` robot — runtime and agent, supervised — until SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.testing import running_plane
from edgeflux.cli import root
from edgeflux.provision import FlashMaterials, build_plan
from edgeflux.provision._units import install_script
from edgeflux.provision.extras import ExtrasError, robot_extras
from runtime.control_client import RuntimeControlClient, RuntimeControlError
from runtime.layout import RobotLayout
from tests.flash.conftest import Plane, flash_args, make_pendulum_bundle
from tests.servers import wait_until


@pytest.mark.parametrize(
    ("adapter", "requested", "expected"),
    [
        ("gym", None, "device,sim"),
        ("udp", None, "device"),
        ("null", None, "device"),
        ("gym", "sim,device", "device,sim"),
        ("gym", " gpu , sim ", "gpu,sim"),
        ("udp", "device,device", "device"),
    ],
)
def test_extras_are_derived_from_the_adapter_and_canonical(
    adapter: str, requested: str | None, expected: str
) -> None:
    assert robot_extras(adapter, requested) == expected


@pytest.mark.parametrize(
    ("adapter", "requested", "message"),
    [
        ("gym", "device", "the gym adapter needs sim (gymnasium)"),
        ("udp", "device,gpu", "cannot be installed together"),
        ("udp", "sim", "installs no onnxruntime"),
        ("udp", "device,cloud", "cloud is not a robot extra"),
        ("udp", ",", "--extras is empty"),
    ],
)
def test_extras_that_do_not_fit_are_refused(adapter: str, requested: str, message: str) -> None:
    with pytest.raises(ExtrasError, match=re.escape(message)):
        robot_extras(adapter, requested)


def test_flash_refuses_extras_without_gymnasium_for_the_gym_adapter_before_writing(
    plane: Plane, bundle: Path, tmp_path: Path
) -> None:
    target = tmp_path / "robot"
    args = [a for a in flash_args(plane, bundle, f"dir:{target}") if a != "--no-wheelhouse"]
    res = CliRunner().invoke(root, [*args, "--extras", "device"])
    assert res.exit_code == 2, res.output
    assert "--extras device,sim" in res.output and "nothing was written" in res.output
    assert "Traceback" not in res.output
    assert not target.exists()


def test_the_install_stamp_names_the_extras(plane: Plane, bundle: Path, tmp_path: Path) -> None:
    from cloud.home import CloudHome

    home = CloudHome.at(plane.home)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "edgeflux-0.1.0-py3-none-any.whl").write_bytes(b"not really a wheel")
    cert, key = home.device_paths(plane.device)

    def plan(extras: str) -> dict[str, bytes]:
        m = FlashMaterials(
            device_id=plane.device,
            cert_pem=cert.read_bytes(),
            key_pem=key.read_bytes(),
            ca_pem=home.ca_cert.read_bytes(),
            trust_dir=home.trust,
            tuf_root=b"{}",
            bundle_dir=bundle,
            runtime_toml="[runtime]\n",
            agent_toml="[agent]\n",
            wheelhouse=wheels,
            extras=extras,
        )
        return {e.path: e.data for e in build_plan(m).entries if e.data is not None}

    a, b = plan("device"), plan("device,sim")
    assert b'WANT="edgeflux[device]==' in a["opt/edgeflux/install.sh"]
    assert b'WANT="edgeflux[device,sim]==' in b["opt/edgeflux/install.sh"]
    # The install unit runs at every boot (the script itself is the no-op check).
    assert b"ConditionPathExists" not in a["etc/systemd/system/edgeflux-install.service"]


def test_a_venv_stamped_with_other_extras_is_rebuilt(tmp_path: Path) -> None:
    opt = tmp_path / "opt" / "edgeflux"
    (opt / "wheelhouse").mkdir(parents=True)
    (opt / "install.sh").write_bytes(install_script("device,sim", "0.1.0"))
    venv = opt / "venv"
    venv.mkdir()
    env = {**os.environ, "EDGEFLUX_PYTHON": sys.executable}
    (venv / ".edgeflux-installed").write_text("edgeflux[device,sim]==0.1.0\n")
    same = subprocess.run(
        ["sh", str(opt / "install.sh")], capture_output=True, text=True, env=env, timeout=60
    )
    assert same.returncode == 0 and "already installed" in same.stdout
    (venv / ".edgeflux-installed").write_text("edgeflux[device]==0.1.0\n")
    (venv / "old-file").write_text("from the first flash")
    other = subprocess.run(
        ["sh", str(opt / "install.sh")], capture_output=True, text=True, env=env, timeout=120
    )
    # The empty wheelhouse makes pip fail, but only after the stale venv was discarded.
    assert "already installed" not in other.stdout
    assert not (venv / "old-file").exists()
    assert not (venv / ".edgeflux-installed").exists()


@pytest.mark.services
def test_robot_start_supervises_a_dir_robot_until_sigterm(tmp_path: Path) -> None:
    with running_plane(tmp_path / "plane", broker=True, ingest=True) as plane:
        plane.device("robot-s", labels={"site": "lab"})
        key = plane.home.key_path("model-signing", private=True)
        v1 = make_pendulum_bundle(tmp_path / "pendulum-1.0.0", key)
        robot = tmp_path / "robot-s"
        args = flash_args(Plane(plane.home.root, "robot-s"), v1, f"dir:{robot}")
        args[args.index("--cloud") + 1] = plane.address
        args[args.index("--broker") + 1] = f"mqtt://127.0.0.1:{plane.broker_port}"
        res = CliRunner().invoke(root, [*args, "--agent-option", "telemetry_period_s=0.5"])
        assert res.exit_code == 0, res.output

        log = (tmp_path / "start.log").open("wb")
        sup = subprocess.Popen(
            [sys.executable, "-m", "edgeflux.cli", "robot", "start", "--root", str(robot)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        layout = RobotLayout.at(robot)

        def text() -> str:
            return (tmp_path / "start.log").read_text(errors="replace")

        try:

            def runtime_pid() -> int:
                try:
                    with RuntimeControlClient(layout.runtime_socket, 2) as rt:
                        rt.status()
                except RuntimeControlError:
                    return 0
                pid = 0
                for line in text().splitlines():
                    if "started runtime (pid" in line:
                        pid = int(line.rsplit("pid ", 1)[1].rstrip(")"))
                return pid

            wait_until(lambda: runtime_pid() > 0, 90, "the runtime answering")
            first = runtime_pid()

            def online() -> bool:
                device = plane.store.get_device("robot-s")
                return bool(device.online and device.last_seen is not None)

            wait_until(online, 60, "the agent reporting to the plane")
            os.kill(first, signal.SIGKILL)  # a crash: the supervisor restarts it
            wait_until(lambda: runtime_pid() not in (0, first), 60, "the runtime restarted")
            assert "runtime exited" in text()
        except TimeoutError:
            pytest.fail(text()[-5000:])
        finally:
            sup.send_signal(signal.SIGTERM)
            code = sup.wait(30)
            log.close()
        assert code == 0, text()[-3000:]
        assert "stopped agent" in text() and "stopped runtime" in text()


def test_flash_reports_files_and_bytes_as_it_writes(
    plane: Plane, bundle: Path, tmp_path: Path
) -> None:
    from cloud.home import CloudHome
    from edgeflux.provision import flash, parse_target

    home = CloudHome.at(plane.home)
    cert, key = home.device_paths(plane.device)
    materials = FlashMaterials(
        device_id=plane.device,
        cert_pem=cert.read_bytes(),
        key_pem=key.read_bytes(),
        ca_pem=home.ca_cert.read_bytes(),
        trust_dir=home.trust,
        tuf_root=b"{}",
        bundle_dir=bundle,
        runtime_toml="[runtime]\n",
        agent_toml="[agent]\n",
    )
    files: list[tuple[int, int]] = []
    written: list[tuple[int, int]] = []
    report = flash(
        materials,
        parse_target(f"dir:{tmp_path / 'robot'}"),
        progress=lambda done, total: written.append((done, total)),
        files_progress=lambda done, total: files.append((done, total)),
    )
    assert files[0] == (0, report.files_written) and files[-1] == (report.files_written,) * 2
    assert [d for d, _ in files] == sorted(d for d, _ in files)  # never goes back
    assert written[-1] == (report.bytes_written, report.bytes_written)


@pytest.mark.slow
def test_reflashing_with_other_extras_converges_the_robots_venv(
    plane: Plane, bundle: Path, tmp_path: Path
) -> None:
    """Flash for the udp adapter (device), install; reflash for gym (device,sim),
    install again: the robot's venv is rebuilt and now has gymnasium. Downloads the
    robot's wheelhouse (`pip download`) and installs it offline twice."""
    robot = tmp_path / "robot"
    base = [a for a in flash_args(plane, bundle, f"dir:{robot}") if a != "--no-wheelhouse"]
    base += ["--wheel-cache", str(tmp_path / "wheels")]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    python = robot / "opt/edgeflux/venv/bin/python"

    def flash_and_install(*extra: str) -> str:
        res = CliRunner().invoke(root, [*base, *extra])
        assert res.exit_code == 0, res.output
        done = subprocess.run(
            ["sh", str(robot / "opt/edgeflux/install.sh")],
            capture_output=True, text=True, env=env, timeout=900,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def has_gymnasium() -> bool:
        probe = [str(python), "-c", "import gymnasium"]
        return subprocess.run(probe, capture_output=True, env=env, cwd="/").returncode == 0

    first = flash_and_install("--adapter", "udp")  # the last --adapter wins: device only
    assert "installed edgeflux[device]==" in first and not has_gymnasium()
    again = flash_and_install("--adapter", "udp")
    assert "already installed" in again
    second = flash_and_install()  # flash_args' --adapter gym: device,sim by default
    assert "installed edgeflux[device,sim]==" in second and has_gymnasium()
    stamp = (robot / "opt/edgeflux/venv/.edgeflux-installed").read_text()
    assert stamp.startswith("edgeflux[device,sim]==")


def test_on_a_systemd_robot_start_enables_the_flashed_units(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The systemd path, with a stand-in `systemctl` that records what it was asked."""
    import click

    from edgeflux.robot import UNITS, _start_units

    units = tmp_path / "root" / "etc/systemd/system"
    units.mkdir(parents=True)
    for name in UNITS[1:]:  # flashed without a wheelhouse: no install unit
        (units / name).write_text("[Unit]\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    fake = bin_dir / "systemctl"
    fake.write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\n[ -z "$FAIL" ] || {{ echo nope >&2; exit 1; }}\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    _start_units(tmp_path / "root")
    assert calls.read_text().splitlines() == [
        "daemon-reload",
        "enable --now edgeflux-runtime.service edgeflux-agent.service",
    ]
    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(click.ClickException, match="systemctl daemon-reload` failed: nope"):
        _start_units(tmp_path / "root")
    with pytest.raises(click.ClickException, match="holds no EdgeFlux units"):
        _start_units(tmp_path / "elsewhere")


def test_a_failed_install_starts_nothing(tmp_path: Path) -> None:
    robot = tmp_path / "robot"
    layout = RobotLayout.at(robot)
    layout.runtime_config.parent.mkdir(parents=True)
    layout.runtime_config.write_text("[runtime]\n")
    layout.agent_config.write_text("[agent]\n")
    (layout.opt).mkdir(parents=True)
    (layout.opt / "install.sh").write_text("echo 'no Python >= 3.11 found'\nexit 7\n")
    res = CliRunner().invoke(root, ["robot", "start", "--root", str(robot)])
    assert res.exit_code == 1, res.output
    assert "install | no Python >= 3.11 found" in res.output  # streamed, prefixed
    assert "install.sh failed (exit 7); the robot was not started" in res.output
    assert not layout.runtime_socket.exists()
