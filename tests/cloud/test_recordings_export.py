"""`edgeflux cloud recordings export --npz`: flight-recorder segments → episode dataset."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from click.testing import CliRunner

from distill.replay import load_replay
from edgeflux.cli import root
from runtime.recording import FlightRecorder


class _Counters:
    def __init__(self) -> None:
        self.ticks = 0
        self.deadline_misses = 0
        self.interventions: Counter[str] = Counter()


def _record(directory: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Ticks 1..200 at 500 Hz in 0.1 s segments, with the cuts an export must make:
    ticks 50-51 dropped, tick 120 without an observation, a bundle switch at tick 150."""
    rec = FlightRecorder(directory, quota_bytes=10**8, segment_s=0.1)
    v1 = SimpleNamespace(label="arm@1.0.0", root_digest="a" * 64)
    v2 = SimpleNamespace(label="arm@1.1.0", root_digest="b" * 64)
    c = _Counters()
    sent = {}
    for tick in range(1, 201):
        if tick in (50, 51):
            continue
        c.ticks = tick
        obs = np.float32([tick, -tick, 0.5])
        act = np.float32([tick / 100])
        sent[tick] = (obs, act)
        rec.record(
            10**12 + tick * 2_000_000,
            10_000,
            None if tick == 120 else obs,
            act,
            c,
            v1 if tick < 150 else v2,
        )
        if tick % 20 == 0:
            rec.drain()
    rec.drain()
    rec._close_segment()
    assert len(rec.ring.segments()) > 2
    return sent


def test_export_cuts_episodes_and_keeps_what_the_robot_saw(tmp_path: Path) -> None:
    sent = _record(tmp_path / "rec")
    out = tmp_path / "data.npz"
    result = CliRunner().invoke(
        root, ["cloud", "recordings", "export", str(tmp_path / "rec"), "--npz", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    buf = load_replay(out)
    assert summary["dataset_digest"] == buf.digest()
    # 1..49 | 52..119 | (120 has no observation) 121..149 | 150..200 (switch)
    assert [len(e) for e in buf.episodes] == [48, 67, 28, 50]
    first = buf.episodes[1]
    np.testing.assert_array_equal(first.obs[0], sent[52][0])
    np.testing.assert_array_equal(first.obs[-1], sent[119][0])
    np.testing.assert_array_equal(first.actions[0], sent[52][1])  # action at tick 52
    assert buf.env_id == "recording:arm@1.0.0"
    assert not buf.episodes[0].rewards.any()


def test_export_refuses_what_it_cannot_read_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "seg-00000000000000000001.mcap"
    bad.write_bytes(b"not an mcap file at all")
    out = tmp_path / "x.npz"
    result = CliRunner().invoke(
        root, ["cloud", "recordings", "export", str(bad), "--npz", str(out)]
    )
    assert result.exit_code == 1
    assert f"{bad}: not a readable MCAP file" in result.output
    assert "Traceback" not in result.output and not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(
        root, ["cloud", "recordings", "export", str(empty), "--npz", str(out)]
    )
    assert result.exit_code == 1 and "no .mcap segments found" in result.output
