"""A/B slots, the state file and the lock, with real signed bundles and real verification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.antirollback import AntiRollbackStore
from runtime.bundle import BundleError, DeviceProfile, VerifiedBundle, verify_bundle
from runtime.layout import RobotLayout
from runtime.slots import NoBundleError, RuntimeLock, RuntimeLockedError, SlotError, SlotStore
from runtime.trust import TrustStore
from tests.runtime.conftest import BundleFactory


def _store(layout: RobotLayout, device: DeviceProfile, tries: int = 2) -> SlotStore:
    counters = AntiRollbackStore(layout.antirollback)

    def verify(path: Path) -> VerifiedBundle:
        return verify_bundle(path, TrustStore(layout.trust), counters=counters, device=device)

    return SlotStore(layout, verify, boot_tries=tries)


def _commit(v: VerifiedBundle, layout: RobotLayout) -> None:
    store = AntiRollbackStore(layout.antirollback)
    store.commit(v.manifest.name, v.manifest.sequence, v.root_digest)


class _Updated(SlotStore):
    v2: VerifiedBundle


def _updated(layout: RobotLayout, device: DeviceProfile, make_bundle: BundleFactory) -> _Updated:
    """v1 committed in slot a, v2 staged and activated in slot b (`store.v2`: as verified)."""
    base = _store(layout, device)
    store = _Updated(layout, base.verify, boot_tries=base.boot_tries)
    _commit(store.install_first(make_bundle()).bundle, layout)
    slot, store.v2 = store.stage(make_bundle(version="1.1.0", sequence=2))
    assert slot == "b" and store.v2.path == layout.slot("b")
    assert store.mark_activated() == "b"
    return store


def test_first_install_then_stage_activate_commit_advances_the_counter_only_at_commit(
    layout: RobotLayout, device: DeviceProfile, make_bundle: BundleFactory
) -> None:
    store = _updated(layout, device, make_bundle)
    counters = AntiRollbackStore(layout.antirollback)
    assert counters.committed("pendulum") == 1
    st = store.state()
    assert (st.active, st.last_good, st.pending, st.pending_state) == ("b", "a", "b", "activated")
    v = store.commit(store.v2, lambda v: _commit(v, layout))
    assert v.manifest.sequence == 2 and counters.committed("pendulum") == 2
    st = store.state()
    assert (st.active, st.last_good, st.pending) == ("b", "b", None)


def test_rollback_returns_to_the_last_good_slot_and_keeps_the_counter(
    layout: RobotLayout, device: DeviceProfile, make_bundle: BundleFactory
) -> None:
    store = _updated(layout, device, make_bundle)
    assert store.rollback("health window failed") == "a"
    st = store.state()
    assert (st.active, st.pending, st.last_failure) == ("a", None, "health window failed")
    assert AntiRollbackStore(layout.antirollback).committed("pendulum") == 1
    assert store.boot().slot == "a"


def test_activated_slot_gets_bounded_start_up_tries_then_the_last_good_one(
    layout: RobotLayout, device: DeviceProfile, make_bundle: BundleFactory
) -> None:
    store = _updated(layout, device, make_bundle)  # boot_tries=2
    assert [store.boot().slot for _ in range(3)] == ["b", "b", "a"]
    st = store.state()
    assert st.pending is None and "start-up tries" in st.last_failure


def test_corrupt_pending_slot_at_start_up_boots_the_last_good_one(
    layout: RobotLayout, device: DeviceProfile, make_bundle: BundleFactory
) -> None:
    store = _updated(layout, device, make_bundle)
    policy = layout.slot("b") / "policy.onnx"
    data = bytearray(policy.read_bytes())
    data[-1] ^= 0xFF
    policy.write_bytes(bytes(data))
    choice = store.boot()
    assert choice.slot == "a" and not choice.trial
    assert "slot b does not verify" in store.state().last_failure


@pytest.mark.parametrize("content", [b"", b'{"schema": "edgeflux.slots/v1", "act', b"\x00\xff"])
def test_truncated_state_file_is_rebuilt_from_what_verifies(
    layout: RobotLayout, device: DeviceProfile, make_bundle: BundleFactory, content: bytes
) -> None:
    store = _updated(layout, device, make_bundle)
    store.commit(store.v2, lambda v: _commit(v, layout))  # v2 committed in slot b
    layout.slot_state.write_bytes(content)
    choice = store.boot()
    assert choice.slot == "b" and choice.bundle.manifest.sequence == 2
    rebuilt = json.loads(layout.slot_state.read_text())
    assert rebuilt["last_good"] == "b" and "state file was corrupt" in rebuilt["last_failure"]


def test_a_fresh_robot_without_a_state_file_boots_with_no_failure(
    layout: RobotLayout, device: DeviceProfile, make_bundle: BundleFactory
) -> None:
    store = _store(layout, device)
    store.install_first(make_bundle())
    layout.slot_state.unlink()  # slots filled by an installer that writes no state file
    assert store.boot().slot == "a"
    assert store.state().last_failure == ""


def test_commit_refuses_a_verified_bundle_of_another_slot(
    layout: RobotLayout, device: DeviceProfile, make_bundle: BundleFactory
) -> None:
    store = _updated(layout, device, make_bundle)
    from dataclasses import replace

    with pytest.raises(SlotError, match="is not slot b"):
        store.commit(replace(store.v2, path=layout.slot("a")), lambda v: None)
    assert store.state().pending == "b"


def test_no_verifiable_bundle_is_a_clear_error(layout: RobotLayout, device: DeviceProfile) -> None:
    with pytest.raises(NoBundleError, match=r"no bundle to run.*slot a is empty"):
        _store(layout, device).boot()


def test_stage_refuses_an_unsigned_bundle_and_leaves_the_slots_as_they_were(
    layout: RobotLayout, device: DeviceProfile, make_bundle: BundleFactory
) -> None:
    store = _store(layout, device)
    store.install_first(make_bundle())
    before = store.state()
    bad = make_bundle(version="1.1.0", sequence=2)
    (bad / "model.sig").unlink()
    with pytest.raises(BundleError):
        store.stage(bad)
    assert not layout.slot("b").exists()
    assert sorted(p.name for p in layout.slots.iterdir()) == ["a"]
    after = store.state()
    assert (after.active, after.pending) == (before.active, before.pending)


def test_stage_refuses_a_lower_sequence_than_committed(
    layout: RobotLayout, device: DeviceProfile, make_bundle: BundleFactory
) -> None:
    store = _store(layout, device)
    _commit(store.install_first(make_bundle(sequence=5)).bundle, layout)
    with pytest.raises(BundleError, match="below the committed sequence 5"):
        store.stage(make_bundle(version="0.9.0", sequence=4))


def test_commit_and_stage_refuse_out_of_order_requests(
    layout: RobotLayout, device: DeviceProfile, make_bundle: BundleFactory
) -> None:
    store = _store(layout, device)
    with pytest.raises(SlotError, match="no committed bundle yet"):
        store.stage(make_bundle())
    first = store.install_first(make_bundle())
    with pytest.raises(SlotError, match="nothing to commit"):
        store.commit(first.bundle, lambda v: None)
    with pytest.raises(SlotError, match="nothing is staged"):
        store.mark_activated()
    store.stage(make_bundle(version="1.1.0", sequence=2))
    store.mark_activated()
    with pytest.raises(SlotError, match="commit or roll back first"):
        store.stage(make_bundle(version="1.2.0", sequence=3))


def test_two_runtimes_on_one_root_fail_clearly(root: Path) -> None:
    layout = RobotLayout.at(root)
    with (
        RuntimeLock(layout),
        pytest.raises(RuntimeLockedError, match=r"another runtime \(pid \d+\)"),
    ):
        RuntimeLock(layout).acquire()
    with RuntimeLock(layout):  # released on exit: a new holder gets it
        pass


def test_stage_interrupted_mid_copy_boots_the_last_good_slot_and_restages_cleanly(
    layout: RobotLayout, device: DeviceProfile, make_bundle: BundleFactory
) -> None:
    store = _store(layout, device)
    _commit(store.install_first(make_bundle()).bundle, layout)
    v2 = make_bundle(version="1.1.0", sequence=2)
    # What a kill -9 inside _copy_in leaves: a half-written staging copy and no pending.
    partial = layout.slots / ".b.staging"
    partial.mkdir()
    (partial / "policy.onnx").write_bytes((v2 / "policy.onnx").read_bytes()[:100])
    assert store.boot().slot == "a"
    slot, verified = store.stage(v2)
    assert slot == "b" and verified.manifest.version == "1.1.0"
    assert not partial.exists()
    assert store.state().pending_state == "staged"
