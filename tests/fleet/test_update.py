"""The update state machine's pure core and its persist-before-act shell.

The effects here are a scripted simulator of the runtime (pure-logic unit tests); the
real runtime and control plane are exercised in test_agent_e2e.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fleet.update import (
    PATH,
    HealthReport,
    HealthThresholds,
    Reason,
    RecoveryAction,
    ShadowResult,
    ShadowThresholds,
    State,
    TargetInfo,
    UpdateError,
    UpdateRunner,
    UpdateStateError,
    UpdateStateFile,
    judge_health,
    judge_shadow,
    recovery_plan,
)

GOOD_SHADOW = ShadowResult(
    ticks=100, divergence_max=0.01, nan_rate=0.0, latency_p99_ms=0.5, envelope_violations=0
)
GOOD_HEALTH = HealthReport(ticks=100, deadline_misses=0, interventions=0)


@dataclass
class SimRuntime:
    """Records calls; `fail` maps an effect name to the UpdateError it raises."""

    committed_sequence: int = 1
    target_sequence: int = 2
    fail: dict[str, UpdateError] = field(default_factory=dict)
    shadow_result: ShadowResult = GOOD_SHADOW
    health: HealthReport = GOOD_HEALTH
    calls: list[str] = field(default_factory=list)
    active: str = "old"
    pending: str | None = None
    divergence_limit: float | None = None  # what the rollout's desired state carries

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail:
            raise self.fail[name]

    def refresh(self, bundle_name: str, timeout_s: float) -> TargetInfo:
        self._call("refresh")
        return TargetInfo(
            bundle_name,
            "1.1.0",
            self.target_sequence,
            "t/x.efb",
            10,
            "ab" * 32,
            max_action_divergence=self.divergence_limit,
        )

    def check_desired_state(self, target: TargetInfo, timeout_s: float) -> None:
        self._call("desired")

    def download(self, target: TargetInfo, timeout_s: float) -> Path:
        self._call("download")
        return Path("/tmp/x.efb")

    def verify(self, target: TargetInfo, download: Path, timeout_s: float) -> Path:
        self._call("verify")
        return Path("/tmp/x")

    def attest(self, target: TargetInfo, bundle_dir: Path, timeout_s: float) -> None:
        self._call("attest")

    def stage(self, bundle_dir: Path, timeout_s: float) -> None:
        self._call("stage")
        self.pending = "new"

    def warm(self, timeout_s: float) -> None:
        self._call("warm")

    def shadow(self, timeout_s: float) -> ShadowResult:
        self._call("shadow")
        return self.shadow_result

    def wait_safe_to_switch(self, timeout_s: float) -> bool:
        self._call("gate")
        return True

    def activate(self, timeout_s: float) -> None:
        self._call("activate")
        self.active, self.pending = "new", "old"

    def health_window(self, timeout_s: float) -> HealthReport:
        self._call("health")
        return self.health

    def commit(self, timeout_s: float) -> None:
        self._call("commit")
        self.committed_sequence = self.target_sequence
        self.pending = None

    def rollback(self, reason: Reason, timeout_s: float) -> None:
        self.calls.append("rollback")
        if self.active == "new":
            self.active = "old"
        self.pending = None

    def installed_sequence(self, bundle_name: str) -> int:
        return self.committed_sequence


def _runner(tmp_path: Path, sim: SimRuntime, **kw: object) -> tuple[UpdateRunner, list[tuple]]:
    events: list[tuple] = []
    runner = UpdateRunner(
        UpdateStateFile(tmp_path / "update.json"),
        sim,
        on_event=lambda rec, st, reason, detail: events.append((st, reason)),
        **kw,  # type: ignore[arg-type]
    )
    return runner, events


def test_happy_path_visits_every_state_in_order_and_commits(tmp_path: Path) -> None:
    sim = SimRuntime()
    runner, events = _runner(tmp_path, sim)
    final = runner.start("pendulum", 2)
    assert final.state is State.IDLE
    assert [s for s, _ in events] == [*PATH, State.IDLE]
    assert sim.committed_sequence == 2 and sim.active == "new"
    assert sim.calls[-1] == "commit"


def test_shadow_results_travel_with_the_shadow_event(tmp_path: Path) -> None:
    details: dict[State, str] = {}
    runner = UpdateRunner(
        UpdateStateFile(tmp_path / "update.json"),
        SimRuntime(),
        on_event=lambda rec, st, reason, detail: details.setdefault(st, detail),
    )
    runner.start("pendulum", 2)
    assert "max divergence 0.01" in details[State.SHADOW]
    assert "100 ticks" in details[State.SHADOW]


def test_each_state_is_on_disk_before_its_effect_runs(tmp_path: Path) -> None:
    seen: dict[str, str] = {}
    store = UpdateStateFile(tmp_path / "update.json")

    class Spy(SimRuntime):
        def _call(self, name: str) -> None:
            seen[name] = json.loads(store.path.read_text())["state"]
            super()._call(name)

    sim = Spy()
    UpdateRunner(store, sim).start("pendulum", 2)
    assert seen["refresh"] == "HINTED"
    assert seen["download"] == "REFRESHED"
    assert seen["stage"] == "ATTESTED"
    assert seen["activate"] == "SWITCHED"
    assert seen["health"] == "HEALTH_WINDOW"
    assert seen["commit"] == "COMMITTED"


def test_divergent_shadow_is_never_activated_under_the_rollouts_limit(tmp_path: Path) -> None:
    sim = SimRuntime(shadow_result=ShadowResult(100, 3.0, 0.0, 0.5, 0), divergence_limit=0.25)
    runner, _ = _runner(tmp_path, sim)
    final = runner.start("pendulum", 2)
    assert final.state is State.FAILED and final.reason is Reason.SHADOW_DIVERGENCE
    assert "3 > 0.25" in final.detail
    assert "activate" not in sim.calls
    assert sim.active == "old" and sim.pending is None
    assert sim.committed_sequence == 1


def test_divergence_without_a_limit_is_reported_not_enforced(tmp_path: Path) -> None:
    details: dict[State, str] = {}
    sim = SimRuntime(shadow_result=ShadowResult(100, 0.99, 0.0, 0.5, 0))
    runner = UpdateRunner(
        UpdateStateFile(tmp_path / "update.json"),
        sim,
        on_event=lambda rec, st, reason, detail: details.setdefault(st, detail),
    )
    assert runner.start("pendulum", 2).state is State.IDLE
    assert sim.committed_sequence == 2
    assert "max divergence 0.99 (not enforced)" in details[State.SHADOW]


@pytest.mark.parametrize(
    ("robot", "rollout", "fails"),
    [
        (None, None, False),  # default: judged on its own health only
        (0.5, None, True),  # the robot's own limit where the rollout sets none
        (0.5, 2.0, False),  # the rollout's limit wins
        (None, 0.5, True),
    ],
)
def test_the_rollouts_limit_else_the_robots_decides_divergence(
    robot: float | None, rollout: float | None, fails: bool
) -> None:
    result = ShadowResult(100, 0.99, 0.0, 0.5, 0)
    verdict = judge_shadow(result, ShadowThresholds(divergence_max=robot), rollout)
    assert (verdict is not None) is fails
    if verdict is not None:
        assert verdict[0] is Reason.SHADOW_DIVERGENCE


def test_every_shadow_verdict_names_the_divergence() -> None:
    slow = judge_shadow(ShadowResult(10, 0.7, 0.0, 50.0, 0), ShadowThresholds())
    assert slow is not None and "max action divergence 0.7 (not enforced)" in slow[1]
    env = judge_shadow(ShadowResult(10, 0.7, 0.0, 0.1, 2), ShadowThresholds(), 1.0)
    assert env is not None and "max action divergence 0.7 (limit 1)" in env[1]


def test_unhealthy_candidate_rolls_back_without_advancing_the_counter(tmp_path: Path) -> None:
    sim = SimRuntime(health=HealthReport(ticks=100, deadline_misses=30, interventions=0))
    runner, _ = _runner(tmp_path, sim)
    final = runner.start("pendulum", 2)
    assert final.state is State.ROLLED_BACK
    assert final.reason is Reason.HEALTH_DEADLINE_MISSES
    assert sim.active == "old" and sim.committed_sequence == 1
    assert "commit" not in sim.calls


def test_target_not_newer_than_installed_fails_before_download(tmp_path: Path) -> None:
    sim = SimRuntime(committed_sequence=5, target_sequence=5)
    runner, _ = _runner(tmp_path, sim)
    final = runner.start("pendulum", 5)
    assert final.state is State.FAILED and final.reason is Reason.NOT_NEWER
    assert "download" not in sim.calls


@pytest.mark.parametrize(
    ("effect", "reason", "final_state"),
    [
        ("refresh", Reason.TUF_REFRESH_FAILED, State.FAILED),
        ("desired", Reason.DESIRED_STATE_MISMATCH, State.FAILED),
        ("download", Reason.DISK_FULL, State.FAILED),
        ("verify", Reason.BUNDLE_INVALID, State.FAILED),
        ("attest", Reason.ATTESTATION_INVALID, State.FAILED),
        ("stage", Reason.STAGE_FAILED, State.FAILED),
        ("activate", Reason.ACTIVATE_FAILED, State.ROLLED_BACK),
        ("commit", Reason.COMMIT_FAILED, State.ROLLED_BACK),
    ],
)
def test_a_failing_step_ends_with_its_reason_and_the_old_bundle_active(
    tmp_path: Path, effect: str, reason: Reason, final_state: State
) -> None:
    sim = SimRuntime(fail={effect: UpdateError(reason, "boom")})
    runner, events = _runner(tmp_path, sim)
    final = runner.start("pendulum", 2)
    assert final.state is final_state and final.reason is reason
    assert events[-1] == (final_state, reason)
    assert sim.active == "old" and sim.committed_sequence == 1


def test_an_unexpected_exception_in_an_effect_fails_cleanly(tmp_path: Path) -> None:
    class Buggy(SimRuntime):
        def warm(self, timeout_s: float) -> None:
            raise ZeroDivisionError("bug")

    sim = Buggy()
    final = _runner(tmp_path, sim)[0].start("pendulum", 2)
    assert final.state is State.FAILED and final.reason is Reason.WARM_FAILED
    assert sim.pending is None  # the staged candidate was discarded


def test_unsafe_gate_times_out_without_switching(tmp_path: Path) -> None:
    class Moving(SimRuntime):
        def wait_safe_to_switch(self, timeout_s: float) -> bool:
            return False

    sim = Moving()
    final = _runner(tmp_path, sim)[0].start("pendulum", 2)
    assert final.reason is Reason.UNSAFE_TO_SWITCH and "activate" not in sim.calls


def test_second_hint_during_an_update_is_refused(tmp_path: Path) -> None:
    store = UpdateStateFile(tmp_path / "update.json")
    from fleet.update import UpdateRecord

    store.save(UpdateRecord(state=State.DOWNLOADED, bundle_name="pendulum"))
    with pytest.raises(UpdateError, match="already in state DOWNLOADED"):
        UpdateRunner(store, SimRuntime()).start("pendulum", 3)


@pytest.mark.parametrize("state", list(State))
def test_recovery_plan_never_commits_unseen_health_evidence(state: State) -> None:
    plan = recovery_plan(state)
    if state in (State.SWITCHED, State.HEALTH_WINDOW):
        assert plan is RecoveryAction.ROLLBACK
    elif state is State.COMMITTED:
        assert plan is RecoveryAction.COMMIT
    elif state in (State.IDLE, State.FAILED, State.ROLLED_BACK):
        assert plan is RecoveryAction.NOTHING
    else:
        assert plan is RecoveryAction.RESTART


class _Killed(BaseException):
    """Stands in for SIGKILL inside one process (the subprocess test does the real one)."""


@pytest.mark.parametrize("state", PATH)
def test_crash_in_any_state_then_resume_ends_on_a_verified_bundle(
    tmp_path: Path, state: State
) -> None:
    sim = SimRuntime()

    def crash(s: State) -> None:
        if s is state:
            raise _Killed

    store = UpdateStateFile(tmp_path / "update.json")
    with pytest.raises(_Killed):
        UpdateRunner(store, sim, on_persisted=crash).start("pendulum", 2)
    assert sim.committed_sequence == 1  # nothing committed before COMMITTED
    final = UpdateRunner(store, sim).resume()
    assert final.state in (State.IDLE, State.ROLLED_BACK)
    if final.state is State.IDLE:
        assert sim.active == "new" and sim.committed_sequence == 2
    else:
        assert sim.active == "old" and sim.committed_sequence == 1
        assert final.reason is Reason.AGENT_RESTARTED


def test_corrupt_state_file_is_reported_with_its_path(tmp_path: Path) -> None:
    p = tmp_path / "update.json"
    p.write_text("{not json")
    with pytest.raises(UpdateStateError, match=str(p)):
        UpdateStateFile(p).load()


def test_judge_shadow_flags_nan_before_divergence() -> None:
    t = ShadowThresholds()
    nan = judge_shadow(ShadowResult(10, float("nan"), 0.1, 0.1, 0), t)
    assert nan is not None and nan[0] is Reason.SHADOW_NAN
    slow = judge_shadow(ShadowResult(10, 0.0, 0.0, 50.0, 0), t)
    assert slow is not None and slow[0] is Reason.SHADOW_LATENCY
    env = judge_shadow(ShadowResult(10, 0.0, 0.0, 0.1, 3), t)
    assert env is not None and env[0] is Reason.SHADOW_ENVELOPE
    assert judge_shadow(GOOD_SHADOW, t) is None


def test_judge_health_compares_rates_with_the_baseline() -> None:
    t = HealthThresholds(miss_rate_max_increase=0.01, intervention_rate_max_increase=0.01)
    # 5% misses is fine when the old bundle also missed 5%.
    same = HealthReport(100, 5, 0, baseline_miss_rate=0.05)
    assert judge_health(same, t) is None
    spike = HealthReport(100, 20, 0, baseline_miss_rate=0.05)
    verdict = judge_health(spike, t)
    assert verdict is not None and verdict[0] is Reason.HEALTH_DEADLINE_MISSES
    meddling = judge_health(HealthReport(100, 0, 9), t)
    assert meddling is not None and meddling[0] is Reason.HEALTH_INTERVENTIONS
    crashed = judge_health(HealthReport(0, 0, 0, crashed=True), t)
    assert crashed is not None and crashed[0] is Reason.HEALTH_CRASH
