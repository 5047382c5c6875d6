"""The flight recorder: CDR bytes as ROS 2 writes them, real MCAP segments, quota and keeps."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcap.reader import make_reader
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from runtime.adapters.null import NullAdapter
from runtime.config import RecordingConfig, RuntimeConfig
from runtime.layout import RobotLayout
from runtime.loop import ControlLoop
from runtime.recording import TICK_TOPIC, FlightRecorder
from runtime.recording.schema import (
    EVENT_DEFINITION,
    EVENT_TYPE,
    TICK_DEFINITION,
    TICK_TYPE,
    decode_tick,
    encode_event,
    encode_tick,
)
from runtime.service import RuntimeService
from tests.runtime import _models
from tests.runtime.conftest import ACT, OBS, BundleFactory, loaded


def _typestore():  # type: ignore[no-untyped-def]
    ts = get_typestore(Stores.ROS2_HUMBLE)
    types = {}
    types.update(get_types_from_msg(TICK_DEFINITION, TICK_TYPE))
    types.update(get_types_from_msg(EVENT_DEFINITION, EVENT_TYPE))
    ts.register(types)
    return ts


TS = _typestore()
Time = TS.types["builtin_interfaces/msg/Time"]
text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)
STAMPS = st.integers(0, 2**31 * 10**9 - 1)  # builtin_interfaces/Time: int32 seconds
floats = st.lists(st.floats(width=32, allow_nan=False), max_size=9)


def test_tick_bytes_fixture() -> None:
    """A fixed message, byte for byte: header, stamp, arrays, the bool's padding, strings."""
    data = encode_tick(
        1_000_000_002, 3, np.float32([1.5]).tobytes(), b"", 0.5, True, ["x"], "p@1", ""
    )
    assert data.hex(" ") == (
        "00 01 00 00 "  # CDR little endian
        "01 00 00 00 02 00 00 00 "  # stamp: sec 1, nanosec 2
        "03 00 00 00 00 00 00 00 "  # tick 3
        "01 00 00 00 00 00 c0 3f "  # observation [1.5]
        "00 00 00 00 "  # action []
        "00 00 00 3f 01 00 00 00 "  # latency_ms 0.5, late, 3 bytes padding
        "01 00 00 00 02 00 00 00 78 00 00 00 "  # interventions ["x"] (+NUL, padding)
        "04 00 00 00 70 40 31 00 "  # bundle "p@1"
        "01 00 00 00 00"  # bundle_digest ""
    )


@settings(max_examples=150, deadline=None)
@given(
    stamp=STAMPS,
    tick=st.integers(0, 2**64 - 1),
    obs=floats,
    act=floats,
    latency=st.floats(0, 1e4, width=32),
    late=st.booleans(),
    reasons=st.lists(text, max_size=4),
    bundle=text,
    digest=text,
)
def test_tick_encoding_matches_rosbags_serializer(
    stamp: int,
    tick: int,
    obs: list[float],
    act: list[float],
    latency: float,
    late: bool,
    reasons: list[str],
    bundle: str,
    digest: str,
) -> None:
    o, a = np.asarray(obs, np.float32), np.asarray(act, np.float32)
    sec, nsec = divmod(stamp, 10**9)
    msg = TS.types[TICK_TYPE](
        stamp=Time(sec=sec, nanosec=nsec), tick=tick, observation=o, action=a,
        latency_ms=np.float32(latency), late=late, interventions=reasons, bundle=bundle,
        bundle_digest=digest,
    )  # fmt: skip
    ours = encode_tick(
        stamp, tick, o.tobytes(), a.tobytes(), latency, late, reasons, bundle, digest
    )
    assert ours == bytes(TS.serialize_cdr(msg, TICK_TYPE))


@settings(max_examples=100, deadline=None)
@given(
    stamp=STAMPS, tick=st.integers(0, 2**64 - 1), obs=floats, act=floats, late=st.booleans(),
    reasons=st.lists(text, max_size=4), bundle=text, digest=text,
)  # fmt: skip
def test_decode_tick_reads_what_rosbags_serializes(
    stamp: int, tick: int, obs: list[float], act: list[float], late: bool,
    reasons: list[str], bundle: str, digest: str,
) -> None:  # fmt: skip
    o, a = np.asarray(obs, np.float32), np.asarray(act, np.float32)
    sec, nsec = divmod(stamp, 10**9)
    msg = TS.types[TICK_TYPE](
        stamp=Time(sec=sec, nanosec=nsec), tick=tick, observation=o, action=a,
        latency_ms=np.float32(0.5), late=late, interventions=reasons, bundle=bundle,
        bundle_digest=digest,
    )  # fmt: skip
    got = decode_tick(bytes(TS.serialize_cdr(msg, TICK_TYPE)))
    assert (got.stamp_ns, got.tick, got.late, got.latency_ms) == (stamp, tick, late, 0.5)
    assert (got.interventions, got.bundle, got.bundle_digest) == (tuple(reasons), bundle, digest)
    np.testing.assert_array_equal(got.observation, o)
    np.testing.assert_array_equal(got.action, a)


def test_decode_tick_refuses_truncated_messages() -> None:
    data = encode_tick(1, 2, np.float32([1, 2]).tobytes(), b"", 0.0, False, ["x"], "b", "d")
    for cut in (3, 10, 20, len(data) - 1):
        with pytest.raises(ValueError):
            decode_tick(data[:cut])


@settings(max_examples=50, deadline=None)
@given(stamp=STAMPS, tick=st.integers(0, 2**64 - 1), kind=text, detail=text)
def test_event_encoding_matches_rosbags_serializer(
    stamp: int, tick: int, kind: str, detail: str
) -> None:
    sec, nsec = divmod(stamp, 10**9)
    msg = TS.types[EVENT_TYPE](
        stamp=Time(sec=sec, nanosec=nsec), tick=tick, kind=kind, detail=detail
    )
    assert encode_event(stamp, tick, kind, detail) == bytes(TS.serialize_cdr(msg, EVENT_TYPE))


def _read(path: Path) -> tuple[list[object], list[object], dict[str, str]]:
    """(ticks, events) decoded with rosbags from one MCAP file, and schema encodings."""
    ticks, events, encodings = [], [], {}
    with path.open("rb") as f:
        reader = make_reader(f)
        assert reader.get_header().profile == "ros2"
        for schema, channel, message in reader.iter_messages():
            assert schema is not None
            encodings[schema.name] = f"{schema.encoding}/{channel.message_encoding}"
            msg = TS.deserialize_cdr(message.data, schema.name)
            (ticks if channel.topic == TICK_TOPIC else events).append(msg)
    return ticks, events, encodings


def test_loop_records_every_tick_into_mcap_that_rosbags_decodes(tmp_path: Path) -> None:
    adapter = NullAdapter(OBS, value=0.25)
    policy = loaded(_models.mlp(OBS, ACT), control={"rate_hz": 200, "deadline_ms": 4})
    loop = ControlLoop(adapter, policy, watchdog=False)
    rec = FlightRecorder(tmp_path / "rec", quota_bytes=10**8, segment_s=60)
    loop.recorder = rec
    rec.start()
    loop.run(ticks=120)
    rec.stop()
    assert rec.error is None and rec.recorded == 120 and rec.dropped == 0
    (seg,) = rec.ring.segments()
    ticks, _, encodings = _read(seg.path)
    assert encodings[TICK_TYPE] == "ros2msg/cdr"
    assert [m.tick for m in ticks] == list(range(1, 121))  # type: ignore[attr-defined]
    last = ticks[-1]
    np.testing.assert_array_equal(last.observation, np.full(OBS, 0.25, np.float32))  # type: ignore[attr-defined]
    np.testing.assert_array_equal(last.action, adapter.last_action)  # type: ignore[attr-defined]
    assert last.bundle == policy.label  # type: ignore[attr-defined]
    assert all(m.latency_ms > 0 for m in ticks)  # type: ignore[attr-defined]


class _Counters:
    def __init__(self) -> None:
        self.ticks = 0
        self.deadline_misses = 0
        self.interventions: Counter[str] = Counter()


def test_ring_holds_the_quota_and_keeps_what_surrounds_an_intervention(tmp_path: Path) -> None:
    """Synthetic 500 Hz ticks (no clock): 0.2 s segments, an intervention at 1.0 s."""
    rec = FlightRecorder(
        tmp_path / "rec", quota_bytes=60_000, segment_s=0.2, keep_before_s=0.3, keep_after_s=0.3
    )
    policy = SimpleNamespace(label="p@1.0.0", root_digest="d" * 64)
    c = _Counters()
    rng = np.random.default_rng(0)  # incompressible values, so segments have real sizes
    t0 = 10**12
    for i in range(1500):  # 3 s
        c.ticks = i + 1
        if i == 500:
            c.interventions["observation_out_of_bounds"] += 1
        obs = rng.standard_normal(OBS).astype(np.float32)
        rec.record(t0 + i * 2_000_000, 10_000, obs, obs[:ACT].copy(), c, policy)
        if i % 25 == 0:
            rec.drain()
    rec.drain()
    rec._close_segment()
    segs = rec.ring.segments()
    assert sum(s.size for s in segs) <= 60_000
    assert rec.ring.deleted > 0
    wall = t0 + rec._wall_offset
    kept = [s for s in segs if s.kept]
    # The intervention at 1.0 s, kept 0.3 s either side: segments from 0.6 s to 1.4 s.
    assert [round((s.start_ns - wall) / 1e9, 1) for s in kept] == [0.6, 0.8, 1.0, 1.2]
    assert all(not s.kept for s in segs if s.start_ns - wall > 1.4e9)
    ticks, events, _ = _read(next(s.path for s in kept if s.start_ns - wall == 1.0e9))
    hit = [m for m in ticks if m.interventions]  # type: ignore[attr-defined]
    assert [m.tick for m in hit] == [501]  # type: ignore[attr-defined]
    assert hit[0].interventions == ["observation_out_of_bounds"]  # type: ignore[attr-defined]
    assert [(e.kind, e.detail) for e in events] == [  # type: ignore[attr-defined]
        ("intervention", "observation_out_of_bounds")
    ]


def test_a_stale_part_file_from_a_crash_is_removed(tmp_path: Path) -> None:
    d = tmp_path / "rec"
    d.mkdir()
    (d / "seg-00000000000000000001.mcap.part").write_bytes(b"half a segment")
    FlightRecorder(d, quota_bytes=1000)
    assert list(d.iterdir()) == []


@pytest.mark.parametrize("enabled", [True, False])
def test_runtime_service_records_into_the_robot_root(
    layout: RobotLayout, make_bundle: BundleFactory, enabled: bool
) -> None:
    config = RuntimeConfig(
        adapter="null",
        adapter_options={"obs_dim": OBS},
        warmup_runs=1,
        recording=RecordingConfig(enabled=enabled, segment_s=60),
    )
    svc = RuntimeService(layout, config, serve=False)
    svc.start(first_bundle=make_bundle(control={"rate_hz": 200, "deadline_ms": 4}))
    try:
        from tests.servers import wait_until

        wait_until(lambda: svc.status().metrics.ticks >= 50, 20, "50 ticks")
    finally:
        svc.stop()
    segs = sorted(layout.recordings.glob("*.mcap")) if layout.recordings.exists() else []
    if not enabled:
        assert segs == [] and svc.recorder is None
        return
    assert len(segs) == 1
    ticks, _, _ = _read(segs[0])
    assert len(ticks) >= 50
    active = svc.status().active
    assert active is not None and ticks[0].bundle_digest == active.root_digest  # type: ignore[attr-defined]
