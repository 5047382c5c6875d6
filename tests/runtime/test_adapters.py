from __future__ import annotations

import socket

import numpy as np
import pytest

from runtime.adapters import AdapterError, AdapterTimeout, RobotAdapter, adapter_names, load_adapter
from runtime.adapters.udp import UdpAdapter, decode_frame, encode_frame


def test_builtin_adapters_are_discoverable_by_name() -> None:
    assert {"gym", "udp", "null"} <= set(adapter_names())
    assert isinstance(load_adapter("null", {"obs_dim": 3}), RobotAdapter)


def test_unknown_adapter_and_bad_options_are_clear_errors() -> None:
    with pytest.raises(AdapterError, match=r"no robot adapter named 'warp'.*known: gym"):
        load_adapter("warp")
    with pytest.raises(AdapterError, match="bad options"):
        load_adapter("null", {"obs_dim": 3, "colour": "red"})


def test_gym_adapter_drives_pendulum_and_resets_episodes() -> None:
    a = load_adapter("gym", {"env": "Pendulum-v1", "seed": 3})
    try:
        obs = a.read_observation()
        assert obs.dtype == np.float32 and obs.shape == (3,)
        for _ in range(201):  # Pendulum truncates at 200 steps
            a.write_action(np.asarray([0.5], np.float32))
        assert len(a.episode_returns) == 1  # type: ignore[attr-defined]
        assert not np.array_equal(a.read_observation(), obs)
    finally:
        a.close()


def test_gym_adapter_names_a_missing_environment() -> None:
    with pytest.raises(AdapterError, match="NoSuchEnv-v0"):
        load_adapter("gym", {"env": "NoSuchEnv-v0"})


def test_udp_frames_round_trip_and_reject_garbage() -> None:
    seq, values = decode_frame(encode_frame(7, [1.0, -2.5]))
    assert seq == 7 and values.tolist() == [1.0, -2.5]
    for bad in (b"", b"XXXX" + bytes(14), encode_frame(1, [1.0])[:-1]):
        with pytest.raises(ValueError):
            decode_frame(bad)


def _controller() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2.0)
    return s


def test_udp_adapter_acts_on_the_newest_frame_and_answers_with_its_sequence() -> None:
    a = UdpAdapter(obs_dim=3, action_dim=1, timeout_ms=500)
    ctl = _controller()
    try:
        for seq in (1, 2, 5):
            ctl.sendto(encode_frame(seq, [seq, 0, 0]), a.address)
        ctl.sendto(encode_frame(4, [4, 0, 0]), a.address)  # older than 5: stale
        ctl.sendto(b"garbage", a.address)
        ctl.sendto(encode_frame(9, [1.0]), a.address)  # wrong length
        got = a.read_observation()
        while a.stale_frames + a.rejected_frames < 3:  # all datagrams may not be in yet
            ctl.sendto(encode_frame(6, [6, 0, 0]), a.address)
            got = a.read_observation()
        assert got[0] in (5.0, 6.0)
        a.write_action(np.asarray([0.25], np.float32))
        seq, action = decode_frame(ctl.recv(1024))
        assert seq == int(got[0]) and action.tolist() == [0.25]
    finally:
        a.close()
        ctl.close()


def test_udp_adapter_times_out_without_observations() -> None:
    a = UdpAdapter(obs_dim=3, action_dim=1, timeout_ms=20)
    try:
        with pytest.raises(AdapterTimeout, match=r"no observation .* within 20.0 ms"):
            a.read_observation()
    finally:
        a.close()


def test_udp_sequence_numbers_wrap_around() -> None:
    a = UdpAdapter(obs_dim=1, action_dim=1, timeout_ms=500)
    ctl = _controller()
    try:
        ctl.sendto(encode_frame(0xFFFFFFFF, [1.0]), a.address)
        assert a.read_observation()[0] == 1.0
        ctl.sendto(encode_frame(0, [2.0]), a.address)  # 0 follows 2**32 - 1
        assert a.read_observation()[0] == 2.0
    finally:
        a.close()
        ctl.close()


def test_builtin_adapters_are_registered_as_entry_points() -> None:
    import importlib.metadata

    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="edgeflux.adapters")}
    assert eps["gym"] == "runtime.adapters.gym:GymAdapter"
    assert eps["udp"] == "runtime.adapters.udp:UdpAdapter"
    assert eps["null"] == "runtime.adapters.null:NullAdapter"
