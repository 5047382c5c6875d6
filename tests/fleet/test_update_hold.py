"""Update locks and maintenance windows on the robot: the lock files, the hold check
and the runner's HELD step (scripted runtime; the real processes are in
test_update_hold_e2e.py)."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.update import (
    RecoveryAction,
    UpdateError,
    UpdateRunner,
    UpdateState,
    UpdateStateFile,
    recovery_plan,
)
from fleet.update_hold import SwitchHold
from fleet.update_lock import INVALID_LOCK_HOLD_S, LockError, UpdateLocks
from protos.lifecycle import Reason
from runtime.maintenance_window import MaintenanceWindow
from tests.fleet.test_update import SimRuntime

S = UpdateState
T0 = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC).timestamp()  # a Monday, noon UTC


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---- the lock files


def test_acquire_read_release(tmp_path: Path) -> None:
    clock = Clock()
    locks = UpdateLocks(tmp_path / "locks", clock)
    assert not locks.read().held
    lock = locks.acquire("nav", "mid-task", 600)
    assert json.loads(lock.path.read_text()) == {
        "who": "nav",
        "reason": "mid-task",
        "expires_at": "2026-12-07T12:10:00Z",
    }
    state = locks.read()
    assert state.held and state.locks[0].reason == "mid-task"
    assert "locked by nav: mid-task (until 2026-12-07T12:10:00Z)" in state.describe()
    locks.acquire("dock", "undocked", 60)
    assert [lk.who for lk in locks.read().locks] == ["dock", "nav"]
    assert locks.release("nav") and not locks.release("nav")
    assert [lk.who for lk in locks.read().locks] == ["dock"]
    clock.now += 61
    assert not locks.read().held  # an expired lock is no lock


@pytest.mark.parametrize(
    ("who", "reason", "ttl", "field"),
    [
        ("../etc", "x", 60, "who"),
        (".hidden", "x", 60, "who"),
        ("nav", "", 60, "reason"),
        ("nav", "a\nb", 60, "reason"),
        ("nav", "x" * 201, 60, "reason"),
        ("nav", "x", 0, "ttl"),
        ("nav", "x", 8 * 86400, "ttl"),
    ],
)
def test_acquire_refuses_bad_words(
    tmp_path: Path, who: str, reason: str, ttl: float, field: str
) -> None:
    with pytest.raises(LockError, match=f"^{field}"):
        UpdateLocks(tmp_path / "locks").acquire(who, reason, ttl)
    assert not (tmp_path / "locks").exists() or not list((tmp_path / "locks").iterdir())


HOSTILE = {
    "not-json": (b"{nope", "document"),
    "list": (b"[1, 2]", "document"),
    "no-reason": (b'{"expires_at": "2026-12-07T13:00:00Z"}', "reason"),
    "reason-type": (b'{"reason": 5, "expires_at": "2026-12-07T13:00:00Z"}', "reason"),
    "no-expiry": (b'{"reason": "x"}', "expires_at"),
    "naive": (b'{"reason": "x", "expires_at": "2026-12-07T13:00:00"}', "expires_at"),
    "garbage-time": (b'{"reason": "x", "expires_at": "soon"}', "expires_at"),
    "too-far": (b'{"reason": "x", "expires_at": "2027-12-07T13:00:00Z"}', "expires_at"),
    "bad-who": (b'{"who": "a/b", "reason": "x", "expires_at": "2026-12-07T13:00:00Z"}', "who"),
    "other-who": (b'{"who": "nav", "reason": "x", "expires_at": "2026-12-07T13:00:00Z"}', "who"),
    "binary": (b"\xff\xfe\x00", "document"),
    "huge": (b'{"reason": "' + b"x" * 5000 + b'"}', "file"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_an_invalid_lock_file_holds_for_a_bounded_time(tmp_path: Path, name: str) -> None:
    body, field = HOSTILE[name]
    d = tmp_path / "locks"
    d.mkdir()
    path = d / f"{name}.json"
    path.write_bytes(body)
    mtime = os.stat(path).st_mtime
    clock = Clock(mtime + 1)
    state = UpdateLocks(d, clock).read()
    assert state.held and not state.locks
    problem = state.problems[0]
    assert problem.path == path and problem.field == field
    assert f"lock file {path} is invalid ({field}:" in state.describe()
    assert path.read_bytes() == body  # reported, never rewritten or removed
    clock.now = mtime + INVALID_LOCK_HOLD_S + 1
    assert not UpdateLocks(d, clock).read().held


def test_temporaries_and_other_files_are_not_locks(tmp_path: Path) -> None:
    d = tmp_path / "locks"
    d.mkdir()
    (d / ".nav.json.tmp-123").write_text("{half")
    (d / "README").write_text("not a lock")
    assert not UpdateLocks(d).read().held


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    d = tmp_path / "locks"
    d.mkdir()
    secret = tmp_path / "secret"
    secret.write_text('{"reason": "x", "expires_at": "2026-12-07T13:00:00Z"}')
    (d / "evil.json").symlink_to(secret)
    state = UpdateLocks(d).read()
    assert state.problems and state.problems[0].field == "file"


def test_release_all(tmp_path: Path) -> None:
    locks = UpdateLocks(tmp_path / "locks")
    locks.acquire("a", "x", 60)
    (tmp_path / "locks" / "b.json").write_text("broken")
    assert sorted(locks.release_all()) == ["a", "b"]
    assert not locks.read().held


# ---- the runner's HELD step


def _runner(tmp_path: Path, hold: SwitchHold) -> tuple[UpdateRunner, SimRuntime, list[tuple]]:
    sim = SimRuntime()
    events: list[tuple] = []
    runner = UpdateRunner(
        UpdateStateFile(tmp_path / "update.json"),
        sim,
        on_event=lambda rec, st, reason, detail: events.append((st, reason, detail)),
        hold=hold,
    )
    return runner, sim, events


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        threading.Event().wait(0.02)
    raise AssertionError("condition not met in time")


def test_a_lock_holds_the_switch_and_release_resumes(tmp_path: Path) -> None:
    locks = UpdateLocks(tmp_path / "locks")
    locks.acquire("nav", "mid-task", 600)
    hold = SwitchHold(locks, poll_s=0.02)
    runner, sim, events = _runner(tmp_path, hold)
    worker = threading.Thread(target=runner.start, args=("pendulum", 2))
    worker.start()
    try:
        _wait(lambda: any(e[0] is S.HELD for e in events))
        held = next(e for e in events if e[0] is S.HELD)
        assert held[1] is Reason.UPDATE_LOCKED and "mid-task" in held[2]
        # Downloaded, staged, attested and shadowed; not switched.
        assert sim.calls == ["refresh", "download", "stage", "attest", "shadow"]
        assert runner.store.load().state is S.HELD
        locks.release("nav")
        worker.join(10)
    finally:
        hold.stop.set()
        worker.join(10)
    assert runner.store.load().state is S.COMMITTED
    states = [e[0] for e in events]
    assert states[states.index(S.HELD) + 1] is S.SWITCHING
    assert "switch" in sim.calls and sim.committed_sequence == 2


def test_nothing_holds_no_held_state(tmp_path: Path) -> None:
    runner, _sim, events = _runner(tmp_path, SwitchHold(UpdateLocks(tmp_path / "locks")))
    assert runner.start("pendulum", 2).state is S.COMMITTED
    assert S.HELD not in [e[0] for e in events]


def test_a_closed_window_holds_until_it_opens(tmp_path: Path) -> None:
    clock = Clock()  # Monday 12:00 UTC
    # 14:00-15:00 Berlin is 13:00-14:00 UTC in December: closed at noon UTC.
    window = MaintenanceWindow.build("dock", "mon-fri", "14:00", "15:00", "Europe/Berlin")
    hold = SwitchHold(UpdateLocks(tmp_path / "locks", clock), poll_s=0.02, clock=clock)
    runner, sim, events = _runner(tmp_path, hold)
    sim_refresh = sim.refresh

    def refresh(name: str, timeout_s: float):  # type: ignore[no-untyped-def]
        t = sim_refresh(name, timeout_s)
        from dataclasses import replace

        return replace(t, windows=json.dumps([window.to_dict()]))

    sim.refresh = refresh  # type: ignore[method-assign]
    worker = threading.Thread(target=runner.start, args=("pendulum", 2))
    worker.start()
    try:
        _wait(lambda: any(e[0] is S.HELD for e in events))
        held = next(e for e in events if e[0] is S.HELD)
        assert held[1] is Reason.OUTSIDE_WINDOW
        assert "outside maintenance window dock; next opening 2026-12-07T13:00:00Z" in held[2]
        assert "switch" not in sim.calls
    finally:
        clock.now = T0 + 3600 + 1  # 13:00:01 UTC: open
        worker.join(10)
        hold.stop.set()
    assert runner.store.load().state is S.COMMITTED


def test_stopping_while_held_keeps_held_and_restarts_later(tmp_path: Path) -> None:
    locks = UpdateLocks(tmp_path / "locks")
    locks.acquire("nav", "mid-task", 600)
    hold = SwitchHold(locks, poll_s=0.02)
    runner, sim, events = _runner(tmp_path, hold)
    worker = threading.Thread(target=runner.start, args=("pendulum", 2))
    worker.start()
    _wait(lambda: any(e[0] is S.HELD for e in events))
    hold.stop.set()
    worker.join(10)
    assert not worker.is_alive()
    assert runner.store.load().state is S.HELD
    assert recovery_plan(S.HELD) is RecoveryAction.RESTART
    assert "switch" not in sim.calls


def test_a_changed_reason_is_reported_again(tmp_path: Path) -> None:
    clock = Clock()
    locks = UpdateLocks(tmp_path / "locks", clock)
    locks.acquire("nav", "mid-task", 600)
    hold = SwitchHold(locks, poll_s=0.02, clock=clock)
    runner, _sim, events = _runner(tmp_path, hold)
    worker = threading.Thread(target=runner.start, args=("pendulum", 2))
    worker.start()
    try:
        _wait(lambda: any(e[0] is S.HELD for e in events))
        locks.acquire("dock", "undocked", 600)
        _wait(lambda: sum(e[0] is S.HELD for e in events) >= 2)
        assert "undocked" in [e for e in events if e[0] is S.HELD][-1][2]
        locks.release_all()
        worker.join(10)
    finally:
        hold.stop.set()
        worker.join(10)
    assert runner.store.load().state is S.COMMITTED


def _windowed(sim: SimRuntime, window: MaintenanceWindow) -> None:
    """The scripted refresh hands out `window`, as a desired state's gate would."""
    from dataclasses import replace

    plain_refresh = sim.refresh

    def refresh(name: str, timeout_s: float):  # type: ignore[no-untyped-def]
        return replace(plain_refresh(name, timeout_s), windows=json.dumps([window.to_dict()]))

    sim.refresh = refresh  # type: ignore[method-assign]


CLOSED = MaintenanceWindow.build("dock", "mon-fri", "14:00", "15:00", "Europe/Berlin")


def _held_runner(
    tmp_path: Path, recheck: Callable[..., str] | None, **kw: float
) -> tuple[UpdateRunner, SimRuntime, list[tuple], SwitchHold]:
    clock = Clock()
    hold = SwitchHold(UpdateLocks(tmp_path / "locks", clock), poll_s=0.02, clock=clock)
    runner, sim, events = _runner(tmp_path, hold)
    runner.recheck_windows = recheck
    runner.recheck_s = 0.05
    for k, v in kw.items():
        setattr(runner, k, v)
    _windowed(sim, CLOSED)
    return runner, sim, events, hold


def test_a_window_removed_on_the_plane_releases_a_held_update(tmp_path: Path) -> None:
    answers = [json.dumps([CLOSED.to_dict()])]
    runner, sim, events, hold = _held_runner(tmp_path, lambda target, timeout: answers[-1])
    worker = threading.Thread(target=runner.start, args=("pendulum", 2))
    worker.start()
    try:
        _wait(lambda: any(e[0] is S.HELD for e in events))
        assert "switch" not in sim.calls
        answers.append("")  # the operator removed the window
        worker.join(10)
    finally:
        hold.stop.set()
        worker.join(10)
    final = runner.store.load()
    assert final.state is S.COMMITTED and final.target["windows"] == ""


def test_a_held_update_the_plane_no_longer_wants_is_dropped(tmp_path: Path) -> None:
    def recheck(target: object, timeout: float) -> str:
        raise UpdateError(Reason.DESIRED_STATE_MISMATCH, "now wants pendulum@1.0.0#1")

    runner, sim, events, hold = _held_runner(tmp_path, recheck)
    try:
        final = runner.start("pendulum", 2)
    finally:
        hold.stop.set()
    assert final.state is S.FAILED and final.reason is Reason.DESIRED_STATE_MISMATCH
    assert "switch" not in sim.calls and sim.rollbacks  # the staged candidate discarded
    assert [e[0] for e in events][-2:] == [S.HELD, S.FAILED]


def test_an_unreachable_plane_keeps_the_windows_it_gave(tmp_path: Path) -> None:
    asked: list[int] = []

    def recheck(target: object, timeout: float) -> str:
        asked.append(1)
        raise ConnectionError("plane unreachable")

    runner, sim, _events, hold = _held_runner(tmp_path, recheck)
    worker = threading.Thread(target=runner.start, args=("pendulum", 2))
    worker.start()
    try:
        _wait(lambda: len(asked) >= 3)
        assert runner.store.load().state is S.HELD and "switch" not in sim.calls
    finally:
        hold.stop.set()
        worker.join(10)
    assert runner.store.load().state is S.HELD


def test_an_update_held_too_long_fails_without_switching(tmp_path: Path) -> None:
    from fleet.update import StepDeadlines

    runner, sim, _events, hold = _held_runner(tmp_path, None, deadlines=StepDeadlines(hold_s=0.2))
    try:
        final = runner.start("pendulum", 2)
    finally:
        hold.stop.set()
    assert final.state is S.FAILED and final.reason is Reason.OUTSIDE_WINDOW
    assert "held for more than" in final.detail and "switch" not in sim.calls


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=600),
        st.dictionaries(
            st.sampled_from(["who", "reason", "expires_at", "extra"]),
            st.one_of(st.none(), st.integers(), st.text(max_size=300), st.lists(st.integers())),
        ).map(lambda d: json.dumps(d).encode()),
    )
)
def test_any_lock_file_content_is_a_lock_or_a_named_problem(body: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "fuzz.json").write_bytes(body)
        state = UpdateLocks(d).read()  # never raises
        assert len(state.locks) + len(state.problems) <= 1
        for p in state.problems:
            assert p.field in ("file", "document", "who", "reason", "expires_at")
            assert str(d / "fuzz.json") in p.describe()
        assert (d / "fuzz.json").read_bytes() == body


def test_a_lock_is_reported_before_a_closed_window(tmp_path: Path) -> None:
    clock = Clock()
    locks = UpdateLocks(tmp_path / "locks", clock)
    hold = SwitchHold(locks, clock=clock)
    assert hold.check([CLOSED]) is not None
    assert hold.check([CLOSED]).reason is Reason.OUTSIDE_WINDOW  # type: ignore[union-attr]
    locks.acquire("nav", "mid-task", 60)
    held = hold.check([CLOSED])
    assert held is not None and held.reason is Reason.UPDATE_LOCKED
    apart = MaintenanceWindow.build("late", "daily", "20:00", "21:00", "UTC")
    locks.release("nav")
    never = hold.check([CLOSED, apart])
    assert never is not None and "never open together" in never.detail
