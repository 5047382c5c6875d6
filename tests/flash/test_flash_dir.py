"""`edgeflux flash` to a directory and to an image, and every way it must refuse."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeflux.cli import root
from runtime.bundle import verify_bundle
from runtime.layout import RobotLayout
from runtime.trust import TrustStore
from tests.flash.conftest import Plane, flash_args


def _flash(*args: str) -> tuple[int, str]:
    """Exit code and output; with --json the output is stdout alone (the report)."""
    result = CliRunner().invoke(root, list(args))
    return result.exit_code, result.stdout if "--json" in args else result.output


def _tree(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_flash_to_dir_lays_out_a_verified_robot(plane: Plane, bundle: Path, tmp_path: Path) -> None:
    robot = tmp_path / "robot-1"
    code, out = _flash(*flash_args(plane, bundle, f"dir:{robot}"))
    assert code == 0, out
    assert "verified on the target" in out
    layout = RobotLayout.at(robot)
    key = layout.identity / "device.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(layout.identity.stat().st_mode) == 0o700
    verified = verify_bundle(layout.slot("a"), TrustStore(layout.trust))
    assert verified.manifest.name == "pendulum"
    assert (layout.trust / "tuf-root.json").is_file() and (layout.trust / "ca.crt").is_file()
    assert (layout.trust / "director.pub").is_file()
    assert 'device_id = "robot-1"' in layout.agent_config.read_text()
    assert "mqtt_tls = false" in layout.agent_config.read_text()
    # plain MQTT is the embedded dev broker (3.1.1 only): no MQTT 5 attempt to time out
    assert "mqtt5 = false" in layout.agent_config.read_text()
    assert 'env = "Pendulum-v1"' in layout.runtime_config.read_text()
    units = robot / "etc/systemd/system"
    assert "Restart=always" in (units / "edgeflux-runtime.service").read_text()
    record = json.loads((layout.etc / "flash.json").read_text())
    assert record["device_id"] == "robot-1" and len(record["plan_digest"]) == 64

    # the written configuration is what the runtime and the agent actually load
    from fleet.config import load_agent_config
    from runtime.config import load_runtime_config

    assert load_agent_config(layout).grpc_target == "127.0.0.1:7443"
    assert load_runtime_config(layout).adapter_options == {"env": "Pendulum-v1"}


def test_reflashing_the_same_device_is_idempotent(
    plane: Plane, bundle: Path, tmp_path: Path
) -> None:
    robot = tmp_path / "robot"
    assert _flash(*flash_args(plane, bundle, f"dir:{robot}"))[0] == 0
    before = _tree(robot)
    code, out = _flash(*flash_args(plane, bundle, f"dir:{robot}", "--json"))
    assert code == 0, out
    report = json.loads(out)
    assert report["files_written"] == 0
    after = _tree(robot)
    before.pop("etc/edgeflux/flash.json"), after.pop("etc/edgeflux/flash.json")
    assert before == after


def test_another_devices_identity_needs_force(plane: Plane, bundle: Path, tmp_path: Path) -> None:
    robot = tmp_path / "robot"
    assert _flash(*flash_args(plane, bundle, f"dir:{robot}"))[0] == 0
    before = _tree(robot)
    code, out = _flash(*flash_args(plane, bundle, f"dir:{robot}", device="robot-2"))
    assert code != 0
    assert "already holds the identity of device 'robot-1'" in out and "--force" in out
    assert _tree(robot) == before
    code, out = _flash(*flash_args(plane, bundle, f"dir:{robot}", "--force", device="robot-2"))
    assert code == 0, out
    assert b"robot-2" in (robot / "etc/edgeflux/agent.toml").read_bytes()


def test_unknown_device_id_is_refused(plane: Plane, bundle: Path, tmp_path: Path) -> None:
    code, out = _flash(*flash_args(plane, bundle, f"dir:{tmp_path / 'r'}", device="robot-99"))
    assert code != 0
    assert "unknown device id 'robot-99'" in out and "cloud device add robot-99" in out
    assert not (tmp_path / "r").exists()


def test_bundle_failing_verification_writes_nothing(
    plane: Plane, bundle: Path, tmp_path: Path
) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    data = bytearray((tampered / "policy.onnx").read_bytes())
    data[-1] ^= 0xFF
    (tampered / "policy.onnx").write_bytes(bytes(data))
    robot = tmp_path / "robot"
    code, out = _flash(*flash_args(plane, tampered, f"dir:{robot}"))
    assert code != 0 and "does not verify" in out
    assert not robot.exists()


def test_target_that_cannot_be_written(plane: Plane, bundle: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, out = _flash(*flash_args(plane, bundle, f"dir:{blocker}/robot"))
    assert code != 0
    assert "cannot create" in out or "not writable" in out
    assert blocker.read_text() == "not a directory"


def test_too_little_space_is_checked_before_writing(
    plane: Plane, bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    robot = tmp_path / "robot"
    code, out = _flash(*flash_args(plane, bundle, f"dir:{robot}"))
    assert code != 0 and "MB free; nothing was written" in out
    assert not any(p.is_file() for p in robot.rglob("*"))


def test_flash_killed_mid_copy_is_completed_by_a_rerun(
    plane: Plane, bundle: Path, tmp_path: Path
) -> None:
    robot = tmp_path / "robot"
    args = flash_args(plane, bundle, f"dir:{robot}")
    # The child process dies (os._exit) right after writing the 4th file.
    code = f"""
import os, sys
import edgeflux.provision.targets as t
real = t.DirTarget.write
def dying(self, entries, progress):
    real(self, entries[:4], progress)
    os._exit(9)
t.DirTarget.write = dying
from edgeflux.cli import root
root.main({args!r}, standalone_mode=True)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=os.getcwd())
    assert proc.returncode == 9, proc.stderr.decode()
    assert not (robot / "etc/edgeflux/flash.json").exists()  # visibly unfinished
    assert len([p for p in robot.rglob("*") if p.is_file()]) == 4
    rc, out = _flash(*args, "--json")
    assert rc == 0, out
    report = json.loads(out)
    assert report["files_written"] == report["files_total"] - 4
    verify_bundle(RobotLayout.at(robot).slot("a"), TrustStore(RobotLayout.at(robot).trust))
    assert (robot / "etc/edgeflux/flash.json").is_file()


def test_image_contents_equal_the_dir_result(plane: Plane, bundle: Path, tmp_path: Path) -> None:
    robot = tmp_path / "robot"
    image = tmp_path / "robot.tar"
    assert _flash(*flash_args(plane, bundle, f"dir:{robot}"))[0] == 0
    code, out = _flash(*flash_args(plane, bundle, f"image:{image}"))
    assert code == 0, out
    with tarfile.open(image) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        from_image = {name: tar.extractfile(m).read() for name, m in members.items()}  # type: ignore[union-attr]
        assert all(m.uid == 0 and m.mtime == 0 for m in members.values())
        assert members["etc/edgeflux/identity/device.key"].mode == 0o600
    from_dir = _tree(robot)
    rec_dir = json.loads(from_dir.pop("etc/edgeflux/flash.json"))
    rec_img = json.loads(from_image.pop("etc/edgeflux/flash.json"))
    assert from_image == from_dir
    assert rec_img["plan_digest"] == rec_dir["plan_digest"]
    assert not list(tmp_path.glob(".edgeflux-image-*"))  # staging cleaned up


def test_robot_settings_are_validated_and_written(
    plane: Plane, bundle: Path, tmp_path: Path
) -> None:
    robot = tmp_path / "robot"
    code, out = _flash(
        *flash_args(plane, bundle, f"dir:{robot}", "--agent-option", "shadow_ticks=-1")
    )
    assert code != 0 and "shadow_ticks" in out
    assert not robot.exists()
    code, out = _flash(
        *flash_args(
            plane,
            bundle,
            f"dir:{robot}",
            "--agent-option",
            "shadow_ticks=40",
            "--runtime-option",
            "warmup_runs=3",
        )
    )
    assert code == 0, out
    from fleet.config import load_agent_config
    from runtime.config import load_runtime_config

    layout = RobotLayout.at(robot)
    assert load_agent_config(layout).shadow_ticks == 40
    assert load_runtime_config(layout).warmup_runs == 3


def test_flashed_robot_runs_real_time_by_default_and_the_unit_grants_it(
    plane: Plane, bundle: Path, tmp_path: Path
) -> None:
    from runtime.config import load_runtime_config

    robot = tmp_path / "robot-rt"
    code, out = _flash(*flash_args(plane, bundle, f"dir:{robot}"))
    assert code == 0, out
    layout = RobotLayout.at(robot)
    config = load_runtime_config(layout)
    assert (config.realtime_priority, config.lock_memory) == (50, True)
    unit = (robot / "etc/systemd/system/edgeflux-runtime.service").read_text()
    for line in ("LimitRTPRIO=99", "LimitMEMLOCK=infinity", "AmbientCapabilities=CAP_SYS_NICE"):
        assert line in unit

    # the operator's choice wins; null turns real-time off (no SCHED_FIFO, nothing written)
    other = tmp_path / "robot-nort"
    code, out = _flash(
        *flash_args(
            plane, bundle, f"dir:{other}", "--runtime-option", "realtime_priority=null",
            "--runtime-option", "lock_memory=false",
        )
    )  # fmt: skip
    assert code == 0, out
    text = RobotLayout.at(other).runtime_config.read_text()
    assert "realtime_priority" not in text and "lock_memory = false" in text
    config = load_runtime_config(RobotLayout.at(other))
    assert (config.realtime_priority, config.lock_memory) == (None, False)
