"""Update hints are untrusted: garbage, replays and floods cost at most one refresh."""

from __future__ import annotations

from fleet._hints import HintGate
from protos import telemetry_pb2


def _hint(name: str = "pendulum", seq: int = 2) -> bytes:
    return telemetry_pb2.UpdateHint(bundle_name=name, sequence=seq).SerializeToString()


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _gate(installed: int = 1, interval: float = 30.0) -> tuple[HintGate, Clock]:
    clock = Clock()
    return HintGate(lambda name: installed, interval, clock), clock


def test_garbage_and_truncated_hints_are_dropped_without_a_refresh() -> None:
    gate, _ = _gate()
    for payload in (b"\xff\xfe garbage", _hint()[:-1], b"", _hint(name="../etc", seq=5)):
        assert gate.offer(payload) is None
    assert gate.take() is None
    assert gate.counters["dropped.malformed"] == 4 and gate.counters["refreshes"] == 0


def test_replayed_hint_for_an_installed_version_is_dropped() -> None:
    gate, _ = _gate(installed=5)
    assert gate.offer(_hint(seq=5)) is None and gate.offer(_hint(seq=3)) is None
    assert gate.take() is None and gate.counters["dropped.stale"] == 2


def test_a_flood_of_hints_costs_one_refresh_per_interval_and_keeps_the_newest() -> None:
    gate, clock = _gate(interval=30.0)
    for seq in range(2, 1002):
        gate.offer(_hint(seq=seq))
    first = gate.take()
    assert first is not None and first.sequence == 1001
    for seq in range(2, 500):
        gate.offer(_hint(seq=seq))
    assert gate.take() is None  # inside the interval
    clock.t += 31
    assert gate.take() is not None
    assert gate.counters["refreshes"] == 2
    assert gate.seconds_until_allowed() > 29


def test_unknown_bundle_name_is_at_most_one_refresh() -> None:
    gate, _ = _gate()
    gate.offer(_hint(name="never-published", seq=9))
    assert gate.take() is not None
    gate.offer(_hint(name="never-published", seq=9))
    assert gate.take() is None
