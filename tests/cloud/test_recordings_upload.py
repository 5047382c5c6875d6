"""Robots upload flight-recorder segments to a real plane (mTLS gRPC on a free port):
resumable, checksummed, paced, indexed; and the export turns the plane's copies into
an episode dataset."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from click.testing import CliRunner

from cloud.cli import cloud
from cloud.recordings.service import recordings_dir
from cloud.store.recordings import RecordingStore
from cloud.testing import RunningPlane, running_plane
from distill.replay import load_replay
from edgeflux.cli import root
from fleet.recordings import SegmentUploader
from protos import recordings_pb2, recordings_pb2_grpc
from runtime.recording import FlightRecorder


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlane]:
    home = tmp_path_factory.mktemp("cloud") / "plane"
    assert CliRunner().invoke(cloud, ["init", str(home)]).exit_code == 0
    with running_plane(home) as p:
        yield p


class _Counters:
    def __init__(self) -> None:
        self.ticks = 0
        self.deadline_misses = 0
        self.interventions: Counter[str] = Counter()


def _segments(directory: Path, ticks: int = 600) -> list[Path]:
    rec = FlightRecorder(directory, quota_bytes=10**8, segment_s=0.4)
    policy = SimpleNamespace(label="arm@1.0.0", root_digest="a" * 64)
    c = _Counters()
    rng = np.random.default_rng(1)
    for t in range(1, ticks + 1):
        c.ticks = t
        if t == 300:
            c.interventions["deadline_overrun"] += 1
        obs = rng.standard_normal(8).astype(np.float32)
        rec.record(10**12 + t * 2_000_000, 10_000, obs, obs[:2].copy(), c, policy)
    rec.drain()
    rec._close_segment()
    return [s.path for s in rec.ring.segments()]


def test_segments_upload_resume_and_export(plane: RunningPlane, tmp_path: Path) -> None:
    creds = plane.device("robot-up")
    local = _segments(tmp_path / "rec")
    assert len(local) >= 3 and any(p.name.endswith(".keep.mcap") for p in local)
    channel = plane.channel(creds)
    stub = recordings_pb2_grpc.RecordingServiceStub(channel)

    # An upload cut off after its first chunk: the plane keeps the part...
    first = local[0]
    data = first.read_bytes()
    ref = recordings_pb2.SegmentRef(name=first.name)
    half = recordings_pb2.SegmentChunk(
        segment=ref, offset=0, data=data[:1000], total_size=len(data)
    )
    receipt = stub.UploadSegment(iter([half]))
    assert (receipt.received, receipt.complete) == (1000, False)
    assert stub.SegmentOffset(ref).received == 1000
    # ...and a chunk that does not continue it is refused with where to resume.
    wrong = recordings_pb2.SegmentChunk(segment=ref, offset=0, data=data, total_size=len(data))
    with pytest.raises(grpc.RpcError) as err:
        stub.UploadSegment(iter([wrong]))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "holds 1000 bytes" in err.value.details()

    clock = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock[0] += s

    up = SegmentUploader(
        channel, tmp_path / "rec", chunk_bytes=4096, bytes_per_s=1e6,
        clock=lambda: clock[0], sleep=sleep,
    )  # fmt: skip
    assert up.pending()[0].name.endswith(".keep.mcap")  # kept segments go first
    assert up.run_once(allowed=lambda: False) == 0  # telemetry first: nothing sent
    assert up.run_once() == len(local)
    total = sum(p.stat().st_size for p in local)
    assert up.sent_bytes == total - 1000  # the cut-off segment resumed, not restarted
    assert sum(slept) == pytest.approx((total - 1000) / 1e6, rel=0.2)  # paced
    assert up.run_once() == 0 and up.pending() == []

    stored = RecordingStore(plane.store.engine).list("robot-up")
    assert sorted(r.name for r in stored) == sorted(p.name for p in local)
    for r in stored:
        copy = recordings_dir(plane.home.root) / "robot-up" / r.name
        original = tmp_path / "rec" / r.name
        assert copy.read_bytes() == original.read_bytes()
        assert r.sha256 == hashlib.sha256(original.read_bytes()).hexdigest()
        assert r.kept == r.name.endswith(".keep.mcap")
    # A second uploader (the agent restarted) learns they are there without sending.
    again = SegmentUploader(channel, tmp_path / "rec")
    assert again.run_once() == len(local) and again.sent_bytes == 0

    home = ["--home", str(plane.home.root)]
    listed = CliRunner().invoke(
        cloud, ["recordings", "list", "--device", "robot-up", "--json", *home]
    )
    assert listed.exit_code == 0, listed.output
    assert {r["name"] for r in json.loads(listed.stdout)} == {p.name for p in local}
    got = tmp_path / "got.mcap"
    result = CliRunner().invoke(
        cloud, ["recordings", "get", "robot-up", local[1].name, "--out", str(got), *home]
    )
    assert result.exit_code == 0, result.output
    assert got.read_bytes() == local[1].read_bytes()
    missing = CliRunner().invoke(
        cloud, ["recordings", "get", "robot-up", "seg-00000000000000000001.mcap", "--out",
                str(got), *home],
    )  # fmt: skip
    assert missing.exit_code == 1 and "no uploaded segment" in missing.output

    out = tmp_path / "robot-up.npz"
    result = CliRunner().invoke(
        root,
        ["cloud", "recordings", "export", str(recordings_dir(plane.home.root) / "robot-up"),
         "--npz", str(out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 599 == len(load_replay(out))


def test_uploads_are_refused_unless_they_are_the_devices_own_and_intact(
    plane: RunningPlane, tmp_path: Path
) -> None:
    creds = plane.device("robot-x")
    stub = recordings_pb2_grpc.RecordingServiceStub(plane.channel(creds))

    def code(chunks: list[recordings_pb2.SegmentChunk]) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as err:
            stub.UploadSegment(iter(chunks))
        return err.value.code(), err.value.details()

    name = "seg-00000000000000000042.mcap"
    other = recordings_pb2.SegmentRef(device_id="robot-up", name=name)
    assert code([recordings_pb2.SegmentChunk(segment=other, total_size=1, last=True)])[0] == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    bad = recordings_pb2.SegmentRef(name="../../etc/passwd")
    assert code([recordings_pb2.SegmentChunk(segment=bad, total_size=1)])[0] == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    ref = recordings_pb2.SegmentRef(name=name)
    lying = recordings_pb2.SegmentChunk(
        segment=ref, data=b"abc", total_size=3, last=True, sha256="0" * 64
    )
    status, details = code([lying])
    assert status == grpc.StatusCode.DATA_LOSS and "upload it again" in details
    assert stub.SegmentOffset(ref).received == 0  # the bad copy is gone: start again
    assert RecordingStore(plane.store.engine).get("robot-x", name) is None
    operator = recordings_pb2_grpc.RecordingServiceStub(plane.channel(plane.operator()))
    with pytest.raises(grpc.RpcError) as err:
        operator.SegmentOffset(ref)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
