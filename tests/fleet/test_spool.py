"""The disk spool: sequence numbers, priorities, budgets, TTLs, ack-only removal, restarts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fleet.spool import ClassBudget, Spool, SpoolPump


def _payload(n: int) -> Callable[[int], bytes]:
    return lambda seq: seq.to_bytes(8, "big") + b"x" * (n - 8)


def test_sequence_numbers_are_per_device_monotonic_and_survive_reopen(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db")
    seqs = [s.put("telemetry", "t", _payload(16)) for _ in range(3)]
    s.close()
    s2 = Spool(tmp_path / "spool.db")
    seqs.append(s2.put("events", "e", _payload(16)))
    assert seqs == [1, 2, 3, 4]
    # the payload was built with the sequence it was stored under
    assert [int.from_bytes(m.payload[:8], "big") for m in s2.peek(10)] == [4, 1, 2, 3]


def test_events_leave_before_older_telemetry(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db")
    s.put("telemetry", "t", _payload(16))
    s.put("telemetry", "t", _payload(16))
    s.put("events", "e", _payload(16))
    assert [m.klass for m in s.peek(3)] == ["events", "telemetry", "telemetry"]


def test_a_message_leaves_only_when_acknowledged(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db")
    s.put("telemetry", "t", _payload(16))
    first = s.peek(1)[0]
    assert len(s) == 1  # peeking does not remove
    s.close()
    s = Spool(tmp_path / "spool.db")  # a crash before PUBACK: still there
    assert s.peek(1)[0].sequence == first.sequence
    s.ack(first.id)
    assert len(s) == 0


def test_full_class_drops_its_oldest_and_counts_them(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db", {"telemetry": ClassBudget(max_bytes=100)})
    for _ in range(5):
        s.put("telemetry", "t", _payload(30))
    s.put("events", "e", _payload(30))  # another class is not touched
    msgs = s.peek(10)
    tele = [m.sequence for m in msgs if m.klass == "telemetry"]
    assert tele == [3, 4, 5]
    assert s.counters()["dropped.telemetry"] == 2
    assert [m.klass for m in msgs].count("events") == 1


def test_expired_messages_are_removed_and_counted(tmp_path: Path) -> None:
    now = [1000.0]
    s = Spool(tmp_path / "spool.db", {"telemetry": ClassBudget(ttl_s=10)}, clock=lambda: now[0])
    s.put("telemetry", "t", _payload(16))
    now[0] += 5
    s.put("telemetry", "t", _payload(16))
    now[0] += 6
    assert [m.sequence for m in s.peek(10)] == [2]
    assert s.counters()["expired.telemetry"] == 1


def test_oversized_message_is_refused_and_consumes_no_sequence(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db", {"events": ClassBudget(max_bytes=50)})
    with pytest.raises(ValueError, match="exceeds the class budget of 50 bytes"):
        s.put("events", "e", _payload(60))
    assert s.put("events", "e", _payload(10)) == 1
    with pytest.raises(ValueError, match="unknown spool class"):
        s.put("logs", "l", _payload(10))


def test_unopenable_spool_names_the_file(tmp_path: Path) -> None:
    from fleet.spool import SpoolError

    bad = tmp_path / "dir.db"
    bad.mkdir()
    with pytest.raises(SpoolError, match=str(bad)):
        Spool(bad)


class _Wire:
    """A publisher that holds PUBACKs until the test releases them."""

    def __init__(self) -> None:
        self.up = True
        self.sent: list[tuple[str, bytes, Callable[[], None]]] = []

    def is_connected(self) -> bool:
        return self.up

    def publish(self, topic: str, payload: bytes, on_ack: Callable[[], None], qos: int = 1) -> bool:
        if not self.up:
            return False
        self.sent.append((topic, payload, on_ack))
        return True


def test_pump_keeps_at_most_window_messages_unacknowledged(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db")
    for _ in range(10):
        s.put("telemetry", "t", _payload(16))
    wire = _Wire()
    pump = SpoolPump(s, wire, window=4)
    assert pump.pump() == 4 and pump.pump() == 0
    for _, _, ack in wire.sent[:2]:
        ack()
    assert len(s) == 8 and pump.inflight() == 2
    assert pump.pump() == 2
    wire.up = False
    assert pump.pump() == 0


def test_pump_resends_what_was_never_acknowledged(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db")
    s.put("telemetry", "t", _payload(16))
    wire = _Wire()
    pump = SpoolPump(s, wire, window=4, resend_after_s=-1.0)
    pump.pump()
    pump.pump()
    assert len(wire.sent) == 2 and wire.sent[0][1] == wire.sent[1][1]
