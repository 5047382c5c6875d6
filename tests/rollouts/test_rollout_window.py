"""`rollout create --window NAME`: the rollout's devices get that maintenance window in
their signed desired state, beside their labels' windows (real plane, admin gRPC)."""

from __future__ import annotations

import json

import grpc
import pytest
from click.testing import CliRunner

from cloud.store.windows import WindowStore
from cloud.testing import RunningPlane
from protos import admin_pb2, common_pb2
from runtime.desired_state import DesiredState
from runtime.maintenance_window import MaintenanceWindow
from tests.rollouts.test_plane import admin, desired_version, devices, plane  # noqa: F401
from tests.servers import wait_until

NIGHT = MaintenanceWindow.build("night", "daily", "22:00", "05:00", "Europe/Berlin")
DOCK = MaintenanceWindow.build("dock", "mon-fri", "02:00", "04:00", "UTC")


def _request(group: str, window: str) -> admin_pb2.CreateRolloutRequest:
    return admin_pb2.CreateRolloutRequest(
        bundle=common_pb2.BundleRef(name="pendulum", version="1.1.0"),
        label_selector=f"group={group}",
        wave_fractions=[1.0],
        health_window_s=120,
        maintenance_window=window,
    )


def _signed_windows(plane: RunningPlane, device_id: str) -> list[str]:  # noqa: F811
    from protos.dsse import Envelope

    control = plane.control.plane
    assert control is not None and control.windows is not None
    rec = plane.store.get_device(device_id)
    assert rec is not None
    env = Envelope.from_json(control.desired_state(rec), max_bytes=1 << 16)
    doc = DesiredState.parse(env.payload)
    assert doc.bundle is not None and doc.bundle.gate is not None
    return [w.name for w in doc.bundle.gate.windows]


def test_a_rollout_names_a_window(plane: RunningPlane) -> None:  # noqa: F811
    ids = devices(plane, "windowed", 2)
    store = WindowStore(plane.store.engine)
    store.put(NIGHT, {"site": "nowhere"}, actor="test")  # no device carries this label
    store.put(DOCK, {"group": "windowed"}, actor="test")
    ch, stub = admin(plane)
    try:
        stub.CreateRollout(_request("windowed", "night"), timeout=10)
        wait_until(lambda: desired_version(plane, ids[0]) == "1.1.0", 30, "the wave dispatched")
        rec = plane.store.get_device(ids[0])
        assert rec is not None and rec.desired_bundle is not None
        assert rec.desired_bundle["gate"]["windows"] == [json.loads(NIGHT.model_dump_json())]
        # Signed: the rollout's window first, then the labels' (re-read within seconds).
        wait_until(lambda: _signed_windows(plane, ids[0]) == ["night", "dock"], 10, "both windows")
    finally:
        ch.close()
        store.remove("night")
        store.remove("dock")


def test_an_unknown_window_is_refused_and_nothing_changes(plane: RunningPlane) -> None:  # noqa: F811
    ids = devices(plane, "nowindow", 1)
    ch, stub = admin(plane)
    try:
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateRollout(_request("nowindow", "nope"), timeout=10)
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
        assert "no maintenance window 'nope'" in (err.value.details() or "")
    finally:
        ch.close()
    assert desired_version(plane, ids[0]) == "1.0.0"


def test_the_cli_has_the_option() -> None:
    from edgeflux.cli import root

    res = CliRunner().invoke(root, ["rollout", "create", "--help"])
    assert res.exit_code == 0 and "--window NAME" in res.output
