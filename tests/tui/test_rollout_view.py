"""The rollouts screen's text: what each gate, wave and device row says."""

from __future__ import annotations

from protos import admin_pb2, common_pb2
from tui.rollout_view import (
    ActionRequest,
    device_rows,
    gate_lines,
    soak_short,
    wave_row,
    wave_to_approve,
)
from tui.rows import DeviceRow


def rollout() -> admin_pb2.Rollout:
    w0 = admin_pb2.RolloutWave(index=0, device_ids=["a", "b"], state="succeeded", committed=2)
    w0.soak = "soak regressed: deadline-miss rate up +0.0500 > 0.01; wave: …"
    w0.outcomes.add(device_id="a", outcome="ROLLED_BACK", reason_code="HEALTH", detail="12 missed")
    w0.retries.add(device_id="b", tries=2, outcome="FAILED", reason_code="DOWNLOAD_FAILED")
    w1 = admin_pb2.RolloutWave(index=1, device_ids=["c"], state="pending", approval_required=True)
    return admin_pb2.Rollout(
        id="ro-1",
        bundle=common_pb2.BundleRef(name="p", version="2", sequence=2),
        state="paused",
        waves=[w0, w1],
        soak_s=30,
        abort_threshold=0.25,
        abort="",
        max_tries=3,
        allow_unattested=True,
        unattested_override_by="operator:eve",
    )


def test_gates_name_every_figure_and_the_wave_before() -> None:
    r = rollout()
    text = "\n".join(gate_lines(r, r.waves[1]))
    assert "soak 30 s after each wave but the last" in text
    assert "abort threshold 0.25 of the dispatched robots failed or regressed" in text
    assert "up to 3 tries per device" in text
    assert "--allow-unattested by operator:eve" in text
    assert "wave 1 (pending): waits for approval" in text
    assert "before it, wave 0's soak regressed: deadline-miss rate up +0.0500" in text
    bare = admin_pb2.Rollout(id="ro-2", state="running")
    assert "no soak · no abort threshold · no retries" in "\n".join(gate_lines(bare))


def test_wave_and_device_rows() -> None:
    r = rollout()
    assert soak_short(r.waves[0].soak) == "regressed"
    assert soak_short("soaking until 12:00:00 UTC") == "soaking until 12:00:00 UTC"
    assert soak_short("") == "—"
    assert wave_row(r.waves[0])[6] == "1"  # one device retried
    live = {"a": DeviceRow(id="a", online=False, update_state="ROLLED_BACK", update_reason="X")}
    rows = device_rows(r.waves[0], live.get)
    assert rows[0] == ("a", "ROLLED_BACK", "HEALTH: 12 missed", "—", "ROLLED_BACK (X)", "○ offline")
    assert rows[1][0] == "b" and rows[1][3] == "2 (FAILED DOWNLOAD_FAILED)" and rows[1][5] == "?"


def test_which_wave_an_approval_names() -> None:
    r = rollout()
    assert wave_to_approve(r, 1) == 1
    assert wave_to_approve(r, 0) is None  # not waiting: the plane picks the next one
    assert wave_to_approve(r, None) is None and wave_to_approve(r, 7) is None
    assert "Approve wave 1" in ActionRequest("approve", "ro-1", 1).describe()
    assert "next wave waiting" in ActionRequest("approve", "ro-1").describe()
    assert "previous bundle back" in ActionRequest("abort", "ro-1", rollback=True).describe()
    assert "previous bundle" not in ActionRequest("abort", "ro-1").describe()


def test_soak_figures_joined_skipped_and_the_external_check() -> None:
    from tui.rollout_view import soak_rows, soak_wave, wave_devices

    r = rollout()
    w0 = r.waves[0]
    w0.soak_figures.add(group="wave", devices=2, reporting=2, miss_rate=0.05, divergence=0.12)
    w0.soak_figures.add(group="not yet updated", devices=1, reporting=1, miss_rate=0.0)
    w0.joined.append("b")
    w0.skipped.add(device_id="z", outcome="SKIPPED", reason_code="OFFLINE", detail="offline 10m")
    w0.held.add(device_id="a", outcome="HELD", reason_code="UPDATE_LOCKED", detail="mid-task")
    w0.approval_check = "allow from https://ci.example/gate (200 in 0.1 s)"
    r.approval_url = "https://ci.example/gate"
    r.abort_min_robots = 5
    assert soak_wave(r, 1) is w0 and soak_wave(r, 0) is w0  # the wave before, or its own
    assert soak_wave(r, None) is None
    rows = soak_rows(w0)
    assert rows[0] == ("wave 0: wave", "2", "2", "0.0500", "0.00", "0.00", "0.00", "0.12")
    assert rows[1][0] == "wave 0: not yet updated" and rows[1][-1] == "—"
    assert wave_devices(w0) == "2 (+1 joined, 1 held, 1 skipped)"
    text = "\n".join(gate_lines(r, w0))
    assert "external approval check https://ci.example/gate" in text
    assert "once 5 were dispatched" in text
    assert "external check: allow from https://ci.example/gate" in text
    assert "skipped z: OFFLINE: offline 10m" in text
    assert "held a: UPDATE_LOCKED: mid-task" in text
    by_id = {row[0]: row for row in device_rows(w0, lambda d: None)}
    assert by_id["b"][2].startswith("joined while the rollout ran")
    assert by_id["a"][1] == "ROLLED_BACK"  # a terminal outcome wins over an earlier hold
