"""The ros2 adapter: rmw_zenoh's wire format, the topic/field mapping, and a signed policy
driving a stand-in ROS 2 robot in a second process over real Zenoh on loopback."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zenoh.ext as zext
from hypothesis import given
from hypothesis import strategies as st
from rosbags.typesys import Stores, get_typestore

from runtime.adapters import AdapterError, AdapterTimeout, load_adapter
from runtime.adapters.ros2 import Ros2Adapter
from runtime.adapters.ros2.keys import decode_attachment, encode_attachment, topic_key
from runtime.config import RecordingConfig, RuntimeConfig
from runtime.layout import RobotLayout
from runtime.service import RuntimeService
from runtime.session import SessionError
from tests.runtime.conftest import OBS, BundleFactory, manifest
from tests.servers import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
PEER = Path(__file__).with_name("_ros2_peer.py")
STORE = get_typestore(Stores.ROS2_JAZZY)
JS = "sensor_msgs/msg/JointState"
TWIST = "geometry_msgs/msg/Twist"
# Pendulum-shaped: cos θ, sin θ from two joint positions, θ̇ from a velocity → torque.
OBSERVATION = [{"topic": "/joint_states", "type": JS, "fields": ["position[0:2]", "velocity[0]"]}]
ACTION = {"topic": "/cmd_vel", "type": TWIST, "fields": ["angular.z"]}


def test_topic_key_is_rmw_zenohs() -> None:
    key = topic_key(0, "/chatter", "std_msgs/msg/String", STORE.hash_rihs01("std_msgs/msg/String"))
    # The key rmw_zenoh gives /chatter (std_msgs/msg/String) on Jazzy, domain 0.
    assert key == (
        "0/chatter/std_msgs::msg::dds_::String_/"
        "RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18"
    )
    assert topic_key(7, "/robot/joint_states", JS, "RIHS01_x").startswith(
        "7/robot/joint_states/sensor_msgs::msg::dds_::JointState_/"
    )
    for bad in ("", "/a//b", "/a/", "no spaces", "/1abc?"):
        with pytest.raises(ValueError):
            topic_key(0, bad, JS, "RIHS01_x")


@given(
    seq=st.integers(-(2**63), 2**63 - 1),
    ts=st.integers(-(2**63), 2**63 - 1),
    gid=st.binary(min_size=16, max_size=16),
)
def test_attachment_matches_zenohs_own_serializer(seq: int, ts: int, gid: bytes) -> None:
    ref = zext.z_serialize(
        ("sequence_number", zext.Int64(seq), "source_timestamp", zext.Int64(ts), "source_gid", gid)
    ).to_bytes()
    assert encode_attachment(seq, ts, gid) == ref
    assert decode_attachment(ref) == (seq, ts, gid)


def test_malformed_attachments_are_refused_with_a_reason() -> None:
    good = encode_attachment(1, 2, bytes(16))
    for bad, why in ((good[:5], "ends"), (b"\x03abc" + good[16:], "expected key")):
        with pytest.raises(ValueError, match=why):
            decode_attachment(bad)


def _options(port: int, **over: Any) -> dict[str, Any]:
    return {
        "connect": [],
        "listen": [f"tcp/127.0.0.1:{port}"],
        "observation": OBSERVATION,
        "action": ACTION,
        "max_age_ms": 500,
    } | over


@pytest.mark.parametrize(
    ("over", "why"),
    [
        ({"observation": [{"topic": "/js", "type": JS, "fields": ["positon[0:2]"]}]}, "no field"),
        ({"action": {"topic": "/cmd", "type": TWIST, "fields": ["angular"]}}, "not a number"),
        ({"action": {"topic": "/cmd", "type": "nav/msg/Nope", "fields": ["x"]}}, "unknown message"),
        ({"observation": []}, "observation"),
        ({"distro": "kinetic"}, "unknown distro"),
        ({"action": {"topic": "bad topic", "type": TWIST, "fields": ["linear.x"]}}, "topic name"),
        ({"msg_dirs": ["/nonexistent"]}, "not a directory"),
    ],
)
def test_bad_mappings_are_refused_naming_what_is_wrong(over: dict[str, Any], why: str) -> None:
    with pytest.raises(AdapterError, match=why):
        load_adapter("ros2", _options(free_port(), **over))


def test_user_message_types_from_msg_files(tmp_path: Path) -> None:
    (tmp_path / "my_robot" / "msg").mkdir(parents=True)
    (tmp_path / "my_robot" / "msg" / "Wheels.msg").write_text("float32 left\nfloat32 right\n")
    action = {"topic": "/wheels", "type": "my_robot/msg/Wheels", "fields": ["left", "right"]}
    adapter = Ros2Adapter(**_options(free_port(), msg_dirs=[str(tmp_path)], action=action))
    try:
        assert (adapter.obs_dim, adapter.action_dim) == (3, 2)
        with pytest.raises(AdapterError, match="action of 2 values"):
            adapter.check_manifest(manifest())  # the pendulum bundle's action is 1 value
        with pytest.raises(AdapterTimeout, match="no sample yet on /joint_states"):
            adapter.read_observation()
    finally:
        adapter.close()


class Peer:
    """The stand-in robot process and the action messages it printed."""

    def __init__(self, endpoint: str, pos: list[float], vel: list[float]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER), endpoint, "/cmd_vel", TWIST,
             json.dumps(pos), json.dumps(vel)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def actions(self, n: int, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        while len(got) < n:
            try:
                item = self.lines.get(timeout=timeout_s)
            except queue.Empty:
                err = self.proc.stderr.read() if self.proc.poll() is not None else ""  # type: ignore[union-attr]
                raise AssertionError(f"the peer sent {len(got)}/{n} actions back; {err}") from None
            if "msg" in item:
                got.append(item)
        return got

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def service_and_peer(
    layout: RobotLayout, make_bundle: BundleFactory
) -> Iterator[tuple[RuntimeService, Peer]]:
    port = free_port()
    config = RuntimeConfig(
        adapter="ros2",
        adapter_options=_options(port),
        warmup_runs=1,
        recording=RecordingConfig(enabled=False),
    )
    svc = RuntimeService(layout, config)
    svc.start(first_bundle=make_bundle(control={"rate_hz": 100, "deadline_ms": 9}))
    peer = Peer(f"tcp/127.0.0.1:{port}", [0.6, 0.8, 0.0], [1.5, 0.0, 0.0])
    try:
        yield svc, peer
    finally:
        peer.stop()
        svc.stop()


def test_signed_policy_drives_a_ros2_robot_in_another_process(
    service_and_peer: tuple[RuntimeService, Peer],
) -> None:
    svc, peer = service_and_peer
    loop = svc.loop
    assert loop is not None
    first = peer.actions(1)  # actions flow only once observations do
    later = peer.actions(30)
    assert later[-1]["seq"] > first[0]["seq"]  # rmw_zenoh attachments, counting up
    # The robot's observation reached the policy as declared: position[0:2] + velocity[0].
    adapter = svc.adapter
    assert isinstance(adapter, Ros2Adapter)
    np.testing.assert_allclose(adapter.read_observation(), [0.6, 0.8, 1.5], rtol=1e-6)
    # What the robot received is what the loop wrote, in Twist.angular.z.
    active = loop.policy
    expected = float(active.session.step(np.float32([0.6, 0.8, 1.5]))[0])
    expected = float(np.clip(expected, -2.0, 2.0))  # the manifest's action bounds
    assert later[-1]["msg"]["angular"]["z"] == pytest.approx(expected, abs=1e-5)
    assert later[-1]["msg"]["linear"] == {"x": 0.0, "y": 0.0, "z": 0.0}
    wait_until(lambda: loop.snapshot().ticks > 50, 20, "the loop to tick")
    assert sum(adapter.dropped.values()) == 0


def test_a_bundle_that_does_not_fit_the_mapping_is_refused_at_stage(
    service_and_peer: tuple[RuntimeService, Peer], make_bundle: BundleFactory
) -> None:
    svc, _ = service_and_peer
    from tests.runtime import _models

    wide = make_bundle(
        _models.mlp(OBS, 2),
        version="1.1.0",
        sequence=2,
        io={
            "inputs": [{"name": "obs", "shape": [-1, OBS], "dtype": "float32"}],
            "outputs": [{"name": "action", "shape": [-1, 2], "dtype": "float32"}],
            "obs_low": [-1.0, -1.0, -8.0],
            "obs_high": [1.0, 1.0, 8.0],
            "action_low": [-2.0, -2.0],
            "action_high": [2.0, 2.0],
        },
    )
    with pytest.raises(SessionError, match=r"action of 1 values .*expects 2"):
        svc.stage(wide)
    assert svc.status().state == "running" and svc.status().pending is None


def test_ros2_robot_recording_uploads_to_the_plane_and_exports_as_episodes(
    layout: RobotLayout, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    """The whole path: a ROS 2 robot in another process, driven over Zenoh by a signed
    policy, recorded to MCAP, uploaded to a real plane, exported as an .npz dataset."""
    from click.testing import CliRunner

    from cloud.cli import cloud
    from cloud.recordings.service import recordings_dir
    from cloud.testing import running_plane
    from distill.replay import load_replay
    from edgeflux.cli import root
    from fleet.recordings import SegmentUploader

    port = free_port()
    config = RuntimeConfig(
        adapter="ros2",
        adapter_options=_options(port),
        warmup_runs=1,
        recording=RecordingConfig(segment_s=0.5),
    )
    svc = RuntimeService(layout, config, serve=False)
    svc.start(first_bundle=make_bundle(control={"rate_hz": 100, "deadline_ms": 9}))
    peer = Peer(f"tcp/127.0.0.1:{port}", [0.6, 0.8], [1.5])
    try:
        peer.actions(60)
    finally:
        peer.stop()
        svc.stop()
    assert len(list(layout.recordings.glob("*.mcap"))) >= 1

    home = tmp_path / "plane"
    assert CliRunner().invoke(cloud, ["init", str(home)]).exit_code == 0
    with running_plane(home) as plane:
        creds = plane.device("ros-robot")
        uploader = SegmentUploader(plane.channel(creds), layout.recordings)
        assert uploader.run_once() == len(list(layout.recordings.glob("*.mcap")))
        stored = recordings_dir(plane.home.root) / "ros-robot"
        out = tmp_path / "ros-robot.npz"
        result = CliRunner().invoke(
            root, ["cloud", "recordings", "export", str(stored), "--npz", str(out)]
        )
        assert result.exit_code == 0, result.output
    data = load_replay(out)
    assert len(data) >= 30  # ticks before the first joint state have no observation
    # What the robot published (JointState position[0:2], velocity[0]) is what was recorded.
    obs = np.concatenate([e.obs for e in data.episodes])
    np.testing.assert_allclose(obs[-1], [0.6, 0.8, 1.5], rtol=1e-6)
