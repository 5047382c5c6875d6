"""Sequences cannot be gotten wrong silently: `cloud push` refuses a bundle older than the
newest published one, says per device what will happen, leaves out (and audits) devices
that already have a newer sequence, and `cloud publish` names the sequence to use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.cli import cloud
from cloud.home import CloudHome, init_home
from cloud.pki import fingerprint
from cloud.rollouts.plan import ALREADY_NEWER, OFFLINE, WILL_UPDATE, installed_sequence
from cloud.store import Store
from tests.cloud.conftest import make_bundle


@pytest.fixture
def home(tmp_path: Path) -> CloudHome:
    h = init_home(tmp_path / "plane")
    store = Store.open(h.database_url(h.config()))
    ca = h.load_ca()
    for device in ("robot-1", "robot-2", "robot-3"):
        store.add_device(device, fingerprint(ca.issue_device(device).cert_pem), {"site": "lab"})
    # robot-1 was flashed with sequence 3 (never published here); robot-2 is online
    store.record_inventory("robot-1", {"anti_rollback": {"pendulum": 3}})
    store.set_online("robot-2", True)
    store.close()
    return h


def _run(home: CloudHome, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cloud, [*args, "--home", str(home.root)])
    assert "Traceback" not in res.output
    return res.exit_code, res.output


def _store(home: CloudHome) -> Store:
    return Store.open(home.database_url(home.config()))


def test_push_reports_each_device_and_leaves_out_the_ones_already_newer(
    home: CloudHome, tmp_path: Path
) -> None:
    key = home.key_path("model-signing", private=True)
    bundle = make_bundle(tmp_path / "b1", key, version="1.0.0", sequence=1)
    code, out = _run(home, "push", str(bundle), "--label", "site=lab", "--no-hint", "--json")
    assert code == 0, out
    info = json.loads(out.strip().splitlines()[-1])
    assert {d: p["outcome"] for d, p in info["plan"].items()} == {
        "robot-1": ALREADY_NEWER,
        "robot-2": WILL_UPDATE,
        "robot-3": OFFLINE,
    }
    assert "sequence 4 or more" in info["plan"]["robot-1"]["detail"]
    assert sorted(info["devices"]) == ["robot-2", "robot-3"]
    store = _store(home)
    try:
        assert store.require_device("robot-1").desired_bundle is None
        dropped = [a for a in store.audit_log() if a.action == "push.dropped"]
        assert [a.target for a in dropped] == ["robot-1"]
        assert dropped[0].detail is not None and dropped[0].detail["reason"] == "NOT_NEWER"
    finally:
        store.close()

    # the operator reads why from the audit log
    code, out = _run(home, "audit", "--action", "push.dropped")
    assert code == 0 and "robot-1" in out and "sequence 4 or more" in out
    code, out = _run(home, "audit", "--action", "push.dropped", "--target", "robot-2", "--json")
    assert code == 0 and json.loads(out) == []

    # the human-readable report names every device
    code, out = _run(home, "push", "pendulum@1.0.0", "--label", "site=lab", "--no-hint")
    assert code == 0 and "robot-1" in out and ALREADY_NEWER in out and OFFLINE in out


def test_a_push_no_device_would_take_is_refused_naming_the_sequence_to_use(
    home: CloudHome, tmp_path: Path
) -> None:
    key = home.key_path("model-signing", private=True)
    bundle = make_bundle(tmp_path / "b1", key, version="1.0.0", sequence=2)
    code, out = _run(home, "push", str(bundle), "--device", "robot-1", "--no-hint")
    assert code == 1
    assert "no device would take pendulum 1.0.0 (sequence 2)" in out
    assert "sequence 4 or more" in out
    store = _store(home)
    try:
        assert store.require_device("robot-1").desired_generation == 0
    finally:
        store.close()


def test_older_bundles_are_refused_by_publish_and_push(home: CloudHome, tmp_path: Path) -> None:
    key = home.key_path("model-signing", private=True)
    old = make_bundle(tmp_path / "b1", key, version="1.0.0", sequence=5)
    new = make_bundle(tmp_path / "b2", key, version="2.0.0", sequence=6, seed=1)
    assert _run(home, "publish", str(old))[0] == 0
    assert _run(home, "publish", str(new))[0] == 0
    code, out = _run(home, "push", "pendulum@1.0.0", "--device", "robot-2", "--no-hint")
    assert code == 1
    assert "below the published pendulum 2.0.0 (sequence 6)" in out
    assert "sequence 7 or more" in out
    same_seq = make_bundle(tmp_path / "b3", key, version="3.0.0", sequence=6, seed=2)
    code, out = _run(home, "push", str(same_seq), "--device", "robot-2", "--no-hint")
    assert code == 1 and "set `sequence` to 7 or more" in out
    store = _store(home)
    try:
        assert store.require_device("robot-2").desired_bundle is None
        assert store.get_bundle("pendulum", "3.0.0") is None
    finally:
        store.close()


def test_installed_sequence_takes_the_newest_report(home: CloudHome) -> None:
    store = _store(home)
    try:
        store.record_inventory(
            "robot-2",
            {
                "anti_rollback": {"pendulum": 2},
                "active_bundle": {"name": "pendulum", "sequence": 4},
            },
        )
        assert installed_sequence(store.require_device("robot-2"), "pendulum") == 4
        assert installed_sequence(store.require_device("robot-2"), "other") == 0
        store.record_inventory("robot-3", {"anti_rollback": {"pendulum": "junk"}})
        assert installed_sequence(store.require_device("robot-3"), "pendulum") == 0
    finally:
        store.close()
