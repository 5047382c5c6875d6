"""`edgeflux runtime ...` as a user runs it: real processes, real signals, real sockets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeflux.cli import root as cli_root
from runtime.control_client import RuntimeControlClient, RuntimeControlError
from runtime.layout import RobotLayout
from tests.runtime import _models
from tests.runtime.conftest import OBS, BundleFactory
from tests.servers import wait_until

REPO = Path(__file__).resolve().parents[2]
FAST = {"rate_hz": 50, "deadline_ms": 15}


def _start(root: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edgeflux.cli", "runtime", "run", "--root", str(root), *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(proc: subprocess.Popen[str], layout: RobotLayout) -> RuntimeControlClient:
    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"runtime exited {proc.returncode}: {proc.stderr.read()}")  # type: ignore[union-attr]
        if not layout.runtime_socket.exists():
            return False
        try:
            with RuntimeControlClient(layout.runtime_socket, timeout_s=2) as c:
                c.status()
            return True
        except RuntimeControlError:
            return False

    wait_until(up, 30, "the runtime's control socket")
    return RuntimeControlClient(layout.runtime_socket, timeout_s=60)


@pytest.fixture
def running(
    layout: RobotLayout, make_bundle: BundleFactory
) -> Iterator[tuple[subprocess.Popen[str], RuntimeControlClient]]:
    # Config from the robot's TOML file; the machine is shared, so misses do not fail health.
    layout.runtime_config.write_text(
        "[runtime]\nhealth_max_miss_rate = 1.0\nhealth_max_fallback_rate = 0.5\nwarmup_runs = 2\n"
    )
    proc = _start(
        layout.root, "--bundle", str(make_bundle(control=FAST)), "--adapter", "gym",
        "--adapter-option", "env=Pendulum-v1", "--json",
    )  # fmt: skip
    try:
        client = _wait_ready(proc, layout)
        yield proc, client
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def test_runtime_run_drives_pendulum_swaps_rolls_back_and_stops_on_sigterm(
    running: tuple[subprocess.Popen[str], RuntimeControlClient],
    layout: RobotLayout,
    make_bundle: BundleFactory,
) -> None:
    proc, client = running
    st = client.status()
    assert st.state == "running" and st.active.bundle.version == "1.0.0"
    fresh = CliRunner().invoke(cli_root, ["runtime", "status", "--root", str(layout.root)])
    assert "last failure  none" in fresh.output and "rebuilt" not in fresh.output

    v2 = make_bundle(_models.mlp(OBS, 1, seed=5), version="1.1.0", sequence=2, control=FAST)
    client.stage(v2)
    st = client.activate(health_window_ticks=25)
    assert st.state == "activated", st.reason
    assert st.active.bundle.version == "1.1.0"
    assert client.commit().anti_rollback == {"pendulum": 2}

    bad = make_bundle(_models.constant(OBS, [np.nan]), version="1.2.0", sequence=3, control=FAST)
    client.stage(bad)
    st = client.activate(health_window_ticks=25)
    assert st.state == "rolled_back" and st.active.bundle.version == "1.1.0"

    args = ["runtime", "status", "--root", str(layout.root), "--json"]
    result = CliRunner().invoke(cli_root, args)
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["active"]["bundle"]["version"] == "1.1.0"
    assert status["anti_rollback"] == {"pendulum": "2"}
    text = CliRunner().invoke(cli_root, ["runtime", "status", "--root", str(layout.root)])
    assert text.exit_code == 0, text.output
    assert "state      rolled_back" in text.output
    assert "active     slot b: pendulum 1.1.0 (sequence 2)" in text.output
    assert "last failure  HEALTH_WINDOW_FAILED: health window failed" in text.output

    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    final = json.loads(out.strip().splitlines()[-1])
    assert final["swaps"] == 3 and final["ticks"] > 50  # to 1.1, to 1.2, back to 1.1
    assert "Traceback" not in err
    assert not layout.runtime_socket.exists()
    # The ticks that switched policies made their deadlines (one stall allowed: this machine
    # is shared; bench/runtime_step.py counts 100 swaps strictly).
    assert final["swap_misses"] <= 1


def test_kill_9_during_activate_restarts_on_a_verified_bundle(
    running: tuple[subprocess.Popen[str], RuntimeControlClient],
    layout: RobotLayout,
    make_bundle: BundleFactory,
) -> None:
    proc, client = running
    client.stage(make_bundle(version="1.1.0", sequence=2, control=FAST))
    errors: list[Exception] = []

    def activate() -> None:
        try:
            client.activate(health_window_ticks=10_000)  # 200 s: killed long before
        except RuntimeControlError as exc:
            errors.append(exc)

    t = threading.Thread(target=activate, daemon=True)
    t.start()
    wait_until(
        lambda: (
            '"pending_state": "activated"' in layout.slot_state.read_text()
            or '"pending_state":"activated"' in layout.slot_state.read_text()
        ),
        20,
        "activation to be persisted",
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    t.join(10)
    assert errors, "the activate call should have failed when the runtime died"

    again = _start(layout.root, "--adapter", "null", "--adapter-option", f"obs_dim={OBS}")
    try:
        c2 = _wait_ready(again, layout)
        st = c2.status()
        # The uncommitted bundle gets a start-up try; both candidates are verified bundles.
        assert st.active.bundle.version in ("1.0.0", "1.1.0")
        assert st.active.bundle.policy_sha256
        assert st.anti_rollback == {"pendulum": 1}
        if st.active.bundle.version == "1.1.0":
            assert st.state == "activated" and st.tries_left == 2
        c2.close()
    finally:
        again.send_signal(signal.SIGINT)  # Ctrl-C stops it as cleanly as SIGTERM
        _, err = again.communicate(timeout=20)
    assert again.returncode == 0, err
    assert "Traceback" not in err


def test_second_runtime_on_the_same_root_exits_with_a_clear_error(
    running: tuple[subprocess.Popen[str], RuntimeControlClient], layout: RobotLayout
) -> None:
    second = _start(layout.root, "--adapter", "null", "--adapter-option", f"obs_dim={OBS}")
    _, err = second.communicate(timeout=30)
    assert second.returncode == 1
    assert "another runtime (pid" in err and "already running" in err
    assert "Traceback" not in err
    assert running[1].status().state == "running"  # the first one is untouched


def test_run_refuses_an_unsigned_first_bundle_without_a_traceback(
    layout: RobotLayout, make_bundle: BundleFactory
) -> None:
    bundle = make_bundle()
    (bundle / "model.sig").unlink()
    result = CliRunner().invoke(
        cli_root, ["runtime", "run", "--root", str(layout.root), "--bundle", str(bundle)]
    )
    assert result.exit_code == 1
    assert "model.sig" in result.output and "Traceback" not in result.output
    assert not layout.slot("a").exists()


def test_status_without_a_runtime_is_a_clear_error(root: Path) -> None:
    result = CliRunner().invoke(cli_root, ["runtime", "status", "--root", str(root)])
    assert result.exit_code == 1
    assert "no runtime is running" in result.output


def test_bench_prints_ratios_as_json(make_bundle: BundleFactory, layout: RobotLayout) -> None:
    bundle = make_bundle(control={"rate_hz": 200, "deadline_ms": 4})
    args = ["runtime", "bench", str(bundle), "--trust", str(layout.trust)]
    args += ["--seconds", "0.3", "--steps", "500", "--json"]
    result = CliRunner().invoke(cli_root, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert data["median_ratio"] > 0 and data["p99_ratio"] > 0
    assert data["loop_ticks"] > 0 and 0 <= data["loop_miss_rate"] <= 1


@pytest.mark.parametrize(
    ("args", "toml", "message"),
    [
        (["--adapter", "warp"], None, "no robot adapter named 'warp'"),
        (["--adapter-option", "env"], None, "'env' is not KEY=VALUE"),
        ([], "[runtime]\nrate_hz = 'fast'\n", "runtime.rate_hz = 'fast'"),
        ([], "[runtime]\nhealth_window = 3\n", "runtime.health_window = 3"),
    ],
    ids=["unknown-adapter", "bad-option", "bad-toml-value", "unknown-toml-key"],
)
def test_run_reports_bad_settings_without_a_traceback(
    layout: RobotLayout,
    make_bundle: BundleFactory,
    args: list[str],
    toml: str | None,
    message: str,
) -> None:
    if toml is not None:
        layout.runtime_config.write_text(toml)
    cmd = ["runtime", "run", "--root", str(layout.root), "--bundle", str(make_bundle())]
    result = CliRunner().invoke(cli_root, cmd + args)
    assert result.exit_code in (1, 2), result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not layout.runtime_socket.exists()
    assert not layout.slot("a").exists()  # nothing installed by a command that failed
    # The lock was released: a corrected command can run on the same root.
    from runtime.slots import RuntimeLock

    with RuntimeLock(layout):
        pass


def test_run_on_an_empty_robot_without_a_bundle_says_how_to_install_one(
    layout: RobotLayout,
) -> None:
    result = CliRunner().invoke(
        cli_root, ["runtime", "run", "--root", str(layout.root), "--adapter", "null",
                   "--adapter-option", f"obs_dim={OBS}"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "no bundle to run" in result.output and "--bundle DIR" in result.output
    assert "Traceback" not in result.output


def test_status_with_a_stale_socket_names_it(layout: RobotLayout) -> None:
    import socket as _socket

    layout.run.mkdir(parents=True, exist_ok=True)
    stale = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    stale.bind(str(layout.runtime_socket))  # bound, never listening: a dead runtime's socket
    stale.close()
    result = CliRunner().invoke(cli_root, ["runtime", "status", "--root", str(layout.root)])
    assert result.exit_code == 1
    assert "no runtime answering on" in result.output and "Traceback" not in result.output
