"""The rollouts screen's text for held robots: waited for with their reason, not
failed; one skipped after --max-held says why."""

from __future__ import annotations

from protos import admin_pb2, common_pb2
from tui.rollout_view import device_rows, gate_lines, wave_devices
from tui.rows import DeviceRow

LOCK = "locked by nav: mid-task"


def test_held_robots_show_with_their_reason_and_a_skipped_one_with_why() -> None:
    w = admin_pb2.RolloutWave(index=0, device_ids=["a", "b", "c"], state="running", committed=1)
    w.outcomes.add(device_id="a", outcome="COMMITTED")
    w.held.add(device_id="b", outcome="HELD", reason_code="UPDATE_LOCKED", detail=LOCK)
    w.skipped.add(
        device_id="c",
        outcome="SKIPPED",
        detail="held (OUTSIDE_WINDOW: window east) for more than 60 s (max_held)",
    )
    r = admin_pb2.Rollout(
        id="ro-1", bundle=common_pb2.BundleRef(name="p", version="2"), state="running", waves=[w]
    )
    assert wave_devices(w) == "3 (1 held, 1 skipped)"
    text = "\n".join(gate_lines(r, w))
    assert f"held b: UPDATE_LOCKED: {LOCK}" in text
    assert "skipped c: held (OUTSIDE_WINDOW: window east) for more than 60 s" in text
    live = {"b": DeviceRow(id="b", online=True, update_state="HELD", update_reason="UPDATE_LOCKED")}
    rows = {row[0]: row for row in device_rows(w, live.get)}
    assert rows["b"][1:3] == ("HELD", f"UPDATE_LOCKED: {LOCK}")
    assert rows["b"][4] == "HELD (UPDATE_LOCKED)"
    assert rows["c"][1] == "SKIPPED" and rows["a"][1] == "COMMITTED"
