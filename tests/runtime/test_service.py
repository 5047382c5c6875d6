"""The runtime service end to end over its real RuntimeControl unix socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from protos.lifecycle import Failure, Reason
from runtime.antirollback import AntiRollbackStore
from runtime.bundle import DeviceProfile
from runtime.config import RuntimeConfig
from runtime.control_client import RuntimeControlClient, RuntimeControlError
from runtime.layout import RobotLayout
from runtime.service import RuntimeService
from runtime.slots import RuntimeLockedError
from tests.runtime import _models
from tests.runtime.conftest import OBS, BundleFactory

FAST = {"rate_hz": 100, "deadline_ms": 9}


@pytest.fixture
def service(
    layout: RobotLayout, device: DeviceProfile, make_bundle: BundleFactory
) -> Iterator[RuntimeService]:
    config = RuntimeConfig(
        adapter="gym",
        adapter_options={"env": "Pendulum-v1"},
        warmup_runs=2,
        swap_timeout_s=10,
        # The machine is shared: one stall can swallow many slots, so misses do not judge
        # health here; a NaN policy (100 % fallback) fails, a few overrun ticks do not.
        health_max_miss_rate=1.0,
        health_max_fallback_rate=0.5,
    )
    svc = RuntimeService(layout, config, device=device)
    svc.start(first_bundle=make_bundle(control=FAST))
    yield svc
    svc.stop()


@pytest.fixture
def client(service: RuntimeService) -> Iterator[RuntimeControlClient]:
    with RuntimeControlClient(service.layout.runtime_socket, timeout_s=30) as c:
        yield c


def test_status_reports_the_running_verified_bundle(client: RuntimeControlClient) -> None:
    st = client.status()
    assert st.state == "running"
    bundle = st.active.bundle
    assert (st.active.slot, bundle.name, bundle.sequence) == ("a", "pendulum", 1)
    assert len(st.active.bundle.policy_sha256) == 64
    assert st.execution_provider == "CPUExecutionProvider"
    assert st.anti_rollback == {"pendulum": 1}


def test_update_stage_shadow_activate_commit(
    client: RuntimeControlClient, service: RuntimeService, make_bundle: BundleFactory
) -> None:
    v2 = make_bundle(_models.mlp(OBS, 1, seed=1), version="1.1.0", sequence=2, control=FAST)
    staged = client.stage(v2)
    assert staged.staged.slot == "b" and staged.staged.bundle.version == "1.1.0"
    report = client.shadow(20)
    assert report.ticks == 20 and report.compared == 20 and report.nan_rate == 0
    assert report.divergence_max > 0  # different weights, same observations
    st = client.activate(health_window_ticks=20)
    assert st.state == "activated", st.reason
    assert st.active.slot == "b" and st.last_good.slot == "a"
    assert st.anti_rollback == {"pendulum": 1}  # activation never advances the counter
    st = client.commit()
    assert st.state == "running" and st.anti_rollback == {"pendulum": 2}
    assert st.last_good.slot == "b" and st.swaps == 1


def test_rollback_from_a_failing_bundle_is_automatic(
    client: RuntimeControlClient, service: RuntimeService, make_bundle: BundleFactory
) -> None:
    bad = make_bundle(_models.constant(OBS, [np.nan]), version="1.1.0", sequence=2, control=FAST)
    client.stage(bad)
    report = client.shadow(10)
    assert report.nan_rate == 1.0  # shadow already says: do not ship
    st = client.activate(health_window_ticks=20)
    assert st.state == "rolled_back" and "health window failed" in st.reason
    assert "action_nonfinite" in st.reason
    assert st.failure.code == "HEALTH_WINDOW_FAILED" and st.failure.detail == st.reason
    assert st.active.slot == "a" and st.active.bundle.version == "1.0.0"
    assert st.anti_rollback == {"pendulum": 1}
    assert service.slots.state().pending is None
    with pytest.raises(RuntimeControlError, match="FAILED_PRECONDITION: nothing to commit"):
        client.commit()


def test_rollback_by_request_after_activation(
    client: RuntimeControlClient, make_bundle: BundleFactory
) -> None:
    client.stage(make_bundle(version="1.1.0", sequence=2, control=FAST))
    client.activate(health_window_ticks=0)
    st = client.rollback(Failure(Reason.ROLLBACK_REQUESTED, "operator said so"))
    assert st.state == "rolled_back" and st.active.bundle.version == "1.0.0"
    assert st.reason == "operator said so"
    assert (st.failure.code, st.failure.detail) == ("ROLLBACK_REQUESTED", "operator said so")


def test_bad_requests_get_specific_status_codes(
    client: RuntimeControlClient, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeControlError, match="FAILED_PRECONDITION: nothing staged"):
        client.activate(10)
    unsigned = make_bundle(version="1.1.0", sequence=2)
    (unsigned / "model.sig").unlink()
    with pytest.raises(RuntimeControlError, match="INVALID_ARGUMENT") as err:
        client.stage(unsigned)
    assert "model.sig" in str(err.value)
    with pytest.raises(RuntimeControlError, match="INVALID_ARGUMENT"):
        client.shadow(0)


def test_metrics_stream_yields_growing_tick_counts(client: RuntimeControlClient) -> None:
    stream = client.metrics(period_ms=50)
    first = next(stream)
    later = [next(stream) for _ in range(20)]  # 1 s: the loop ticks meanwhile, however busy
    stream.close()
    assert later[-1].ticks > first.ticks and first.rate_hz == 100
    assert [m.ticks for m in later] == sorted(m.ticks for m in later)


def test_second_runtime_on_the_same_root_is_refused(
    service: RuntimeService, device: DeviceProfile
) -> None:
    other = RuntimeService(service.layout, RuntimeConfig(adapter="null"), device=device)
    with pytest.raises(RuntimeLockedError, match="already running on robot root"):
        other.start()
    assert service.loop is not None and service.loop.running


def test_anti_rollback_store_is_not_touched_by_stage_or_shadow(
    client: RuntimeControlClient, service: RuntimeService, make_bundle: BundleFactory
) -> None:
    before = service.layout.antirollback.read_bytes()
    client.stage(make_bundle(version="2.0.0", sequence=9, control=FAST))
    client.shadow(5)
    assert service.layout.antirollback.read_bytes() == before
    assert AntiRollbackStore(service.layout.antirollback).committed("pendulum") == 1


def test_runtime_drives_a_robot_controller_over_udp(
    layout: RobotLayout, device: DeviceProfile, make_bundle: BundleFactory
) -> None:
    import socket
    import threading

    from runtime.adapters.udp import decode_frame, encode_frame
    from tests.servers import free_port, wait_until

    port = free_port()
    config = RuntimeConfig(
        adapter="udp",
        adapter_options={"obs_dim": OBS, "action_dim": 1, "listen": f"127.0.0.1:{port}",
                         "timeout_ms": 5},
        warmup_runs=2,
    )  # fmt: skip
    svc = RuntimeService(layout, config, device=device, serve=False)
    svc.start(first_bundle=make_bundle(_models.constant(OBS, [0.75]), control=FAST))
    ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ctl.bind(("127.0.0.1", 0))
    ctl.settimeout(0.05)
    answers: dict[int, float] = {}
    stop = threading.Event()

    def controller() -> None:  # a robot controller streaming state at 200 Hz
        seq = 0
        while not stop.is_set():
            seq += 1
            ctl.sendto(encode_frame(seq, [1.0, 0.0, 0.1]), ("127.0.0.1", port))
            try:
                got_seq, action = decode_frame(ctl.recv(1024))
                answers[got_seq] = float(action[0])
            except TimeoutError:
                pass
            stop.wait(0.005)

    t = threading.Thread(target=controller, daemon=True)
    t.start()
    try:
        wait_until(lambda: len(answers) >= 20, 20, "20 action frames from the runtime")
    finally:
        stop.set()
        t.join(5)
        svc.stop()
        ctl.close()
    values = list(answers.values())
    # The policy's action; 0.0 only for a tick that overran on a busy machine (fallback).
    assert set(values) <= {0.0, 0.75} and values.count(0.75) >= len(values) // 2
    assert all(seq > 0 for seq in answers)  # actions answer real observation sequence numbers


def test_activation_refused_while_the_robot_is_unsafe_to_switch_keeps_the_old_bundle(
    layout: RobotLayout, device: DeviceProfile, make_bundle: BundleFactory
) -> None:
    from runtime.adapters.null import NullAdapter
    from runtime.service import ControlError

    class Moving(NullAdapter):  # an integrator's gate: never safe (e.g. the arm is moving)
        def is_safe_to_switch(self) -> bool:
            return False

    config = RuntimeConfig(adapter="null", warmup_runs=2, swap_timeout_s=0.3)
    svc = RuntimeService(layout, config, adapter=Moving(OBS), device=device, serve=False)
    svc.start(first_bundle=make_bundle(control=FAST))
    try:
        svc.stage(make_bundle(version="1.1.0", sequence=2, control=FAST))
        with pytest.raises(ControlError, match="not safe to switch"):
            svc.activate(health_window_ticks=5)
        st = svc.status()
        assert st.active is not None and st.active.manifest.version == "1.0.0"
        assert st.state == "running" and st.slots.pending is None and st.pending is None
        assert st.slots.active == "a" and "switch failed" in st.slots.last_failure
        assert svc.loop is not None and svc.loop.running
    finally:
        svc.stop()


def test_failed_restage_forgets_the_previous_staged_bundle(
    client: RuntimeControlClient, service: RuntimeService, make_bundle: BundleFactory
) -> None:
    client.stage(make_bundle(version="1.1.0", sequence=2, control=FAST))
    bad = make_bundle(version="1.2.0", sequence=3, control=FAST)
    (bad / "policy.onnx").write_bytes(b"tampered")
    with pytest.raises(RuntimeControlError, match="INVALID_ARGUMENT"):
        client.stage(bad)
    st = client.status()
    assert st.state == "running" and not st.HasField("pending")
    with pytest.raises(RuntimeControlError, match="nothing staged"):
        client.activate(5)
    assert st.active.bundle.version == "1.0.0"


def test_status_metrics_carry_skipped_slots_so_miss_rates_stay_per_slot(
    client: RuntimeControlClient, service: RuntimeService
) -> None:
    assert service.loop is not None
    service.loop.counters.skipped += 7  # as if a stall had swallowed 7 slots
    m = client.status().metrics
    assert m.skipped_slots == 7


def test_failures_cross_the_socket_as_a_reason_code_and_a_detail(
    client: RuntimeControlClient, make_bundle: BundleFactory
) -> None:
    with pytest.raises(RuntimeControlError) as nothing:
        client.activate()
    assert nothing.value.failure.code is Reason.WRONG_STATE
    assert nothing.value.failure.detail == "nothing staged to activate; stage a bundle first"
    unsigned = make_bundle(version="1.1.0", sequence=2)
    (unsigned / "model.sig").unlink()
    with pytest.raises(RuntimeControlError) as bad:
        client.stage(unsigned)
    assert (
        bad.value.failure.code is Reason.BUNDLE_INVALID and "model.sig" in bad.value.failure.detail
    )


def test_switch_then_a_separate_health_window_then_commit(
    client: RuntimeControlClient, make_bundle: BundleFactory
) -> None:
    assert not client.status().HasField("failure")  # a fresh robot: nothing failed
    client.stage(make_bundle(version="1.1.0", sequence=2, control=FAST))
    st = client.activate()
    assert st.state == "activated" and st.active.bundle.version == "1.1.0"
    st = client.health_window(20)
    assert st.state == "activated" and not st.HasField("failure")
    assert client.commit().anti_rollback == {"pendulum": 2}
    with pytest.raises(RuntimeControlError) as late:
        client.health_window(5)
    assert late.value.failure.code is Reason.WRONG_STATE


def test_one_update_verifies_the_bundle_once(
    client: RuntimeControlClient,
    service: RuntimeService,
    make_bundle: BundleFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import runtime.service as service_module

    calls: list[Path] = []
    real = service_module.verify_bundle

    def counting(path: Path, *args: object, **kw: object) -> object:
        calls.append(Path(path))
        return real(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(service_module, "verify_bundle", counting)
    client.stage(make_bundle(version="1.1.0", sequence=2, control=FAST))
    client.shadow(5)
    client.activate()
    client.health_window(5)
    assert client.commit().anti_rollback == {"pendulum": 2}
    assert len(calls) == 1, calls  # the copy in the slot, before it is loaded
    assert calls[0].name == ".b.staging"
