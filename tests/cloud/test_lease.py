"""The PostgreSQL advisory-lock lease that elects the rollout engine's driver."""

from __future__ import annotations

import datetime as dt
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.home import init_home
from cloud.lease import AdvisoryLease, current_epoch, leader, lease_for, lease_key
from cloud.rollouts.engine import Rollout, RolloutSpec
from cloud.rollouts.gates import GateSpec
from cloud.rollouts.service import RolloutService
from cloud.store import BundleRecord, EventRecord, FencedError, Store, StoreUnavailable
from cloud.store.fence import fenced
from tests.servers import Postgres, run_postgres, wait_until

pytestmark = [pytest.mark.services]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    with run_postgres() as p:
        yield p


def test_lease_keys_are_stable_distinct_signed_64_bit() -> None:
    assert lease_key("rollout-engine") == lease_key("rollout-engine")
    assert lease_key("rollout-engine") != lease_key("other")
    assert all(-(2**63) <= lease_key(n) < 2**63 for n in ("a", "b", "rollout-engine"))


def test_sqlite_needs_no_lease() -> None:
    assert lease_for("sqlite:////tmp/x.db", "rollout-engine") is None


def test_a_lease_shorter_than_two_renewals_is_refused() -> None:
    with pytest.raises(ValueError, match="at least twice retry_s"):
        AdvisoryLease("postgresql://x/y", "t", retry_s=3.0, lease_s=5.0)


def test_exactly_one_holder_and_the_other_takes_over_when_it_lets_go(pg: Postgres) -> None:
    url = pg.create_database("lease_unit")
    changes: list[tuple[str, bool]] = []
    a = AdvisoryLease(url, "t", retry_s=0.2, on_change=lambda h: changes.append(("a", h)))
    b = AdvisoryLease(url, "t", retry_s=0.2, on_change=lambda h: changes.append(("b", h)))
    a.start()
    try:
        assert a.wait_held(10)
        b.start()
        time.sleep(1.0)  # b tries five times meanwhile; none may succeed
        assert a.held and not b.held
        assert leader(url, "t") == a.application_name
        a.stop()
        assert b.wait_held(5)
        wait_until(lambda: len(changes) == 3, 5, "b's listener")
        assert changes == [("a", True), ("a", False), ("b", True)]
        other = AdvisoryLease(url, "another-singleton", retry_s=0.2).start()
        try:
            assert other.wait_held(5)  # one lease per name, independent
        finally:
            other.stop()
    finally:
        a.stop()
        b.stop()
    # the server ends a closed session's backend (and frees its lock) a moment later
    wait_until(lambda: leader(url, "t") is None, 5, "the lock to be freed")


def test_each_term_gets_the_next_epoch_and_a_stalled_holder_is_deposed(pg: Postgres) -> None:
    url = pg.create_database("lease_epochs")
    a = AdvisoryLease(url, "t", retry_s=0.2, lease_s=3.0).start()
    b = AdvisoryLease(url, "t", retry_s=0.2, lease_s=3.0)
    try:
        assert a.wait_held(10) and a.epoch == 1 == current_epoch(url, "t")
        b.start()
        time.sleep(1.5)  # a renews every 0.2 s: b must not depose it
        assert a.held and not b.held
        a._renew = lambda: time.sleep(30)  # type: ignore[method-assign]  # a stalls
        assert b.wait_held(10)
        assert b.epoch == 2 == current_epoch(url, "t")
        assert not a.held  # not renewed for over lease_s: a no longer counts itself leader
    finally:
        b.stop()
        a.stop(timeout_s=0.1)  # its thread sleeps in the stalled renewal: close the session
    assert current_epoch(url, "never-held") is None


def _setup_store(url: str, devices: tuple[str, ...], bundle: dict[str, object]) -> Store:
    store = Store.open(url)
    store.add_devices_bulk([(d, f"{i:02d}" * 32, {"g": "x"}) for i, d in enumerate(devices)])
    store.add_bundle(BundleRecord("p", "1.1.0", 2, "ab" * 32, 10, "p-1.1.0.efb"))
    return store


def test_the_store_refuses_a_write_of_an_older_epoch_and_nothing_is_written(
    pg: Postgres,
) -> None:
    url = pg.create_database("lease_fence")
    store = _setup_store(url, ("d0",), {})
    lease = AdvisoryLease(url, "rollout-engine", retry_s=0.2).start()
    try:
        assert lease.wait_held(10)
        with fenced("rollout-engine", lease.epoch):
            assert store.set_desired(["d0"], {"name": "p", "version": "1"}) == {"d0": 1}
        stale = pytest.raises(FencedError, match=r"in epoch 1, this writer's term \(epoch 0\)")
        with stale, fenced("rollout-engine", lease.epoch - 1):
            store.set_desired(["d0"], {"name": "p", "version": "2"})
        dev = store.get_device("d0")
        assert dev is not None and dev.desired_generation == 1
        assert (dev.desired_bundle or {})["version"] == "1"
        store.set_desired(["d0"], {"name": "p", "version": "3"})  # unfenced writes go on
    finally:
        lease.stop()
        store.close()


def test_a_writer_stalled_inside_a_fenced_transaction_cannot_block_the_next_term(
    pg: Postgres,
) -> None:
    """The old leader stops mid-transaction, holding the lease row FOR SHARE: the server
    ends that transaction after lease_s idle, the next term begins, and the stalled
    write is lost (its commit fails) instead of landing in the new term."""
    url = pg.create_database("lease_stalled_tx")
    store = _setup_store(url, ("d0",), {})
    a = AdvisoryLease(url, "t", retry_s=0.2, lease_s=1.0).start()
    b = AdvisoryLease(url, "t", retry_s=0.2, lease_s=1.0)
    outcome: list[BaseException | None] = []
    try:
        assert a.wait_held(10) and a.epoch == 1

        def stalled_write() -> None:
            try:
                with fenced("t", 1, lease_s=1.0), store._tx() as conn:
                    conn.exec_driver_sql("UPDATE devices SET desired_generation = 42")
                    time.sleep(4.0)  # stopped mid-transaction, past its lease
                outcome.append(None)
            except Exception as exc:
                outcome.append(exc)

        writer = threading.Thread(target=stalled_write)
        writer.start()
        time.sleep(0.5)  # the writer holds the lease row
        a._renew = lambda: time.sleep(30)  # type: ignore[method-assign]  # a stalls too
        b.start()
        assert b.wait_held(10), "the next term did not begin"
        assert b.epoch == 2
        writer.join(15)
        assert outcome and isinstance(outcome[0], StoreUnavailable), outcome
        dev = store.get_device("d0")
        assert dev is not None and dev.desired_generation == 0  # nothing of it landed
    finally:
        b.stop()
        a.stop(timeout_s=0.1)  # its thread sleeps in the stalled renewal: close the session
        store.close()


def _replica(
    home: Path, url: str, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.cloud._plane_replica", str(home), url],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=log.open("a"),
        text=True,
    )


def _pid_of(app_name: str | None) -> int | None:
    return None if app_name is None else int(app_name.rsplit(":", 1)[1])


def test_killing_the_leading_plane_hands_the_rollout_engine_over_within_10_s(
    pg: Postgres, tmp_path: Path
) -> None:
    url = pg.create_database("lease_planes")
    home = tmp_path / "home"
    init_home(home)  # replicas share one home (keys, TUF) and one database
    log = tmp_path / "replicas.log"
    a = _replica(home, url, log)
    b: subprocess.Popen[str] | None = None
    try:
        assert a.stdout is not None and a.stdout.readline().startswith("ready"), log.read_text()
        wait_until(lambda: _pid_of(leader(url, "rollout-engine")) == a.pid, 20, "a to lead")
        b = _replica(home, url, log)
        assert b.stdout is not None and b.stdout.readline().startswith("ready"), log.read_text()
        time.sleep(2.0)  # b's lease tries twice meanwhile; a keeps leading
        assert _pid_of(leader(url, "rollout-engine")) == a.pid
        a.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        a.wait(10)
        wait_until(
            lambda: _pid_of(leader(url, "rollout-engine")) == b.pid,  # type: ignore[union-attr]
            10,
            "b to take the rollout engine over",
        )
        handover = time.monotonic() - killed
        print(f"handover after kill -9: {handover:.2f} s")
        assert handover < 10
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


class _Lines:
    """The stdout lines of a process, read by a thread (so waits can time out)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        out = proc.stdout
        threading.Thread(target=lambda: [self.q.put(x.strip()) for x in out], daemon=True).start()

    def wait_for(self, prefix: str, timeout_s: float, log: Path) -> str:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                break
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line {prefix!r} in {timeout_s} s; log:\n{log.read_text()}")


BUNDLE = {
    "name": "p",
    "version": "1.1.0",
    "sequence": 2,
    "target": "p-1.1.0.efb",
    "sha256": "ab" * 32,
    "length": 10,
}


def _stop(*procs: subprocess.Popen[str] | None) -> None:
    for p in procs:
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def test_a_leader_stopped_mid_wave_is_fenced_off_and_the_wave_is_applied_once(
    pg: Postgres, tmp_path: Path
) -> None:
    """SIGSTOP the leading plane between a wave's saved intent and its side effect; the
    other plane takes over and applies the wave; SIGCONT: the old leader's write is
    refused, it stands down, and the rollout completes with each wave applied once."""
    url = pg.create_database("lease_fencing")
    home = tmp_path / "home"
    init_home(home)
    devices = ("d0", "d1", "d2", "d3")
    store = _setup_store(url, devices, BUNDLE)
    gates = GateSpec(allow_unattested=True, override_by="test").to_dict()
    spec = RolloutSpec(BUNDLE, devices, (0.5, 1.0), 0.0, 600, gates=gates)
    fake_plane = types.SimpleNamespace(store=store, home=None, config=None)
    RolloutService(fake_plane, hints=False)._save(  # type: ignore[arg-type]
        Rollout.create("ro-f", spec, now=time.time(), created_by="test")
    )
    log = tmp_path / "replicas.log"
    # a stops in this pause: long enough for the test to send SIGSTOP under load
    env = {"EDGEFLUX_TEST_APPLY_PAUSE_S": "5"}
    a = b = None
    try:
        a = _replica(home, url, log, env)
        a_out = _Lines(a)
        a_out.wait_for("ready", 60, log)
        b = _replica(home, url, log, env)
        b_out = _Lines(b)
        b_out.wait_for("ready", 60, log)
        first = a_out.wait_for("applying ro-f", 30, log)  # a leads: it started the rollout
        assert first == "applying ro-f wave 0"
        a.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        assert current_epoch(url, "rollout-engine") == 1
        wait_until(lambda: _pid_of(leader(url, "rollout-engine")) == b.pid, 10, "b to lead")
        takeover = time.monotonic() - stopped
        print(f"takeover from a stopped leader: {takeover:.2f} s")
        assert takeover < 10
        assert current_epoch(url, "rollout-engine") == 2
        assert b_out.wait_for("applying ro-f", 15, log) == "applying ro-f wave 0"
        a.send_signal(signal.SIGCONT)  # a wakes in the middle of its wave-0 step
        wait_until(lambda: "rollout driver stands down" in log.read_text(), 20, "a to stand down")
        assert "epoch 2" in log.read_text()

        def commit(index: int) -> None:
            wait_until(lambda: _dispatched(store, index) is not None, 30, f"wave {index} out")
            r = _dispatched(store, index)
            assert r is not None
            for d in r.waves[index].device_ids:
                gen = store.get_device(d).desired_generation  # type: ignore[union-attr]
                store.record_event(
                    EventRecord(
                        d, gen, dt.datetime.now(dt.UTC), "update", "COMMITTED", "", "", BUNDLE
                    )
                )

        commit(0)
        commit(1)
        wait_until(lambda: _state(store) == "completed", 30, "the rollout to complete")
        for d in devices:
            dev = store.get_device(d)
            assert dev is not None and dev.desired_generation == 1, d  # applied once
            assert (dev.desired_bundle or {})["version"] == "1.1.0"
        sets = [
            a.actor
            for a in store.audit_log(limit=1000)
            if a.action == "device.set_desired" and a.actor.startswith("rollout:ro-f")
        ]
        assert len(sets) == 2  # one per wave
        rec = store.get_rollout("ro-f")
        assert rec is not None
        said = [h["reason"] for h in rec.status["history"] if "dispatched" in h["reason"]]
        assert said == ["wave 0 dispatched to 2 device(s)", "wave 1 dispatched to 2 device(s)"]
        assert not any("could not be dispatched" in h["reason"] for h in rec.status["history"])
        assert _pid_of(leader(url, "rollout-engine")) == b.pid
    finally:
        _stop(a, b)
        store.close()


def _dispatched(store: Store, index: int, rollout_id: str = "ro-f") -> Rollout | None:
    rec = store.get_rollout(rollout_id)
    if rec is None:
        return None
    r = Rollout.from_dicts(rec.id, rec.spec, rec.status)
    return r if r.waves[index].dispatched_at is not None else None


def _state(store: Store, rollout_id: str = "ro-f") -> str | None:
    rec = store.get_rollout(rollout_id)
    return None if rec is None else rec.state


def test_an_operators_pause_on_another_replica_is_never_undone_by_the_leader(
    pg: Postgres, tmp_path: Path
) -> None:
    """The leading plane decided wave 0 (its intent is saved) and is about to point the
    devices at the bundle; meanwhile an operator pauses the rollout through the other
    replica's gRPC API. The leader's side effect and its save are refused (the rollout
    moved past the revision its step works from): no device moves while paused, the
    rollout stays paused, and after a resume each wave is applied exactly once."""
    from cloud.testing import running_plane
    from protos import admin_pb2, admin_pb2_grpc

    url = pg.create_database("lease_operator_pause")
    home = tmp_path / "home"
    init_home(home)
    devices = ("d0", "d1", "d2", "d3")
    store = _setup_store(url, devices, BUNDLE)
    log = tmp_path / "replicas.log"
    a = _replica(home, url, log, {"EDGEFLUX_TEST_APPLY_PAUSE_S": "5"})
    try:
        a_out = _Lines(a)
        a_out.wait_for("ready", 60, log)
        wait_until(lambda: _pid_of(leader(url, "rollout-engine")) == a.pid, 20, "a to lead")
        with running_plane(home, overrides={"database_url": url}) as b:
            stub = admin_pb2_grpc.FleetAdminServiceStub(b.channel(b.operator("ops", "admin")))
            gates = GateSpec(allow_unattested=True, override_by="test").to_dict()
            spec = RolloutSpec(BUNDLE, devices, (0.5, 1.0), 0.0, 600, gates=gates)
            fake_plane = types.SimpleNamespace(store=store, home=None, config=None)
            RolloutService(fake_plane, hints=False)._save(  # type: ignore[arg-type]
                Rollout.create("ro-p", spec, now=time.time(), created_by="test")
            )
            assert a_out.wait_for("applying ro-p", 30, log) == "applying ro-p wave 0"
            paused = stub.PauseRollout(admin_pb2.RolloutId(id="ro-p"), timeout=10)
            assert paused.state == "paused"
            wait_until(
                lambda: "rollout ro-p: write refused" in log.read_text(), 20, "a's write refused"
            )
            assert _state(store, "ro-p") == "paused"
            for d in devices:  # the wave decided before the pause did not go out
                dev = store.get_device(d)
                assert dev is not None and dev.desired_generation == 0, d
            resumed = stub.ResumeRollout(admin_pb2.RolloutId(id="ro-p"), timeout=10)
            assert resumed.state == "running"
            for index in (0, 1):
                wait_until(
                    lambda i=index: _dispatched(store, i, "ro-p") is not None, 30, f"wave {index}"
                )
                _commit(store, _dispatched(store, index, "ro-p"), index)  # type: ignore[arg-type]
            wait_until(lambda: _state(store, "ro-p") == "completed", 30, "the rollout to end")
        for d in devices:
            dev = store.get_device(d)
            assert dev is not None and dev.desired_generation == 1, d  # applied once
        sets = [
            x.actor
            for x in store.audit_log(limit=1000)
            if x.action == "device.set_desired" and x.actor.startswith("rollout:ro-p")
        ]
        assert len(sets) == 2  # one per wave
        rec = store.get_rollout("ro-p")
        assert rec is not None
        said = [h["reason"] for h in rec.status["history"]]
        assert said.count("wave 0 dispatched to 2 device(s)") == 1
        assert any(x.startswith("paused by ") and "ops" in x for x in said), said
        assert rec.state == "completed"
    finally:
        _stop(a)
        store.close()


def _commit(store: Store, r: Rollout, index: int) -> None:
    for d in r.waves[index].device_ids:
        gen = store.get_device(d).desired_generation  # type: ignore[union-attr]
        store.record_event(
            EventRecord(d, gen, dt.datetime.now(dt.UTC), "update", "COMMITTED", "", "", BUNDLE)
        )


def test_a_deposed_drivers_gate_checks_are_not_recorded(pg: Postgres, tmp_path: Path) -> None:
    """The gates' findings (the attestation check before a wave, its override note) live
    in the rollout's status, written by the driver's fenced save: a driver whose term is
    over checks the next wave's attestation but records nothing of it."""
    url = pg.create_database("lease_fence_gates")
    devices = ("d0", "d1")
    store = _setup_store(url, devices, BUNDLE)
    lease = AdvisoryLease(url, "rollout-engine", retry_s=0.2).start()
    try:
        assert lease.wait_held(10)
        gates = GateSpec(allow_unattested=True, override_by="test").to_dict()
        spec = RolloutSpec(BUNDLE, devices, (0.5, 1.0), 0.0, 600, gates=gates)
        home = types.SimpleNamespace(trust=tmp_path / "trust")  # no attestation keys
        svc = RolloutService(
            types.SimpleNamespace(store=store, home=home, config=None),  # type: ignore[arg-type]
            hints=False,
        )
        svc._save(Rollout.create("ro-g", spec, now=time.time(), created_by="test"))
        with fenced("rollout-engine", lease.epoch):
            svc._pass(None)  # wave 0 checked and dispatched
        r = _dispatched(store, 0, "ro-g")
        assert r is not None and r.gates["attestation"]["wave"] == 0
        _commit(store, r, 0)
        before = store.get_rollout("ro-g")
        stale = pytest.raises(FencedError, match="term")
        with stale, fenced("rollout-engine", lease.epoch - 1):
            svc._pass(None)  # wave 1's gates run, and its writes are refused
        after = store.get_rollout("ro-g")
        assert after is not None and before is not None and after.status == before.status
        assert after.status["gates"]["attestation"]["wave"] == 0
        with fenced("rollout-engine", lease.epoch):
            svc._pass(None)  # the leader's term: wave 1 checked, recorded, dispatched
        r = _dispatched(store, 1, "ro-g")
        assert r is not None and r.gates["attestation"]["wave"] == 1
    finally:
        lease.stop()
        store.close()
