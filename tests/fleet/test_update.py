"""The update state machine's pure core and its persist-before-act shell.

The effects here are a scripted simulator of the runtime (pure-logic unit tests); the
real runtime and control plane are exercised in test_agent_e2e.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.update import (
    PATH,
    Reason,
    RecoveryAction,
    ShadowResult,
    ShadowThresholds,
    StagedBundle,
    TargetInfo,
    UpdateError,
    UpdateRunner,
    UpdateState,
    UpdateStateError,
    UpdateStateFile,
    judge_shadow,
    recovery_plan,
)
from protos.lifecycle import Failure

State = UpdateState
GOOD_SHADOW = ShadowResult(
    ticks=100, divergence_max=0.01, nan_rate=0.0, latency_p99_ms=0.5, envelope_violations=0
)


@dataclass
class SimRuntime:
    """Records calls; `fail` maps an effect name to the UpdateError it raises."""

    committed_sequence: int = 1
    target_sequence: int = 2
    fail: dict[str, UpdateError] = field(default_factory=dict)
    shadow_result: ShadowResult = GOOD_SHADOW
    healthy: bool = True
    staged_sequence: int | None = None
    rollbacks: list[Failure] = field(default_factory=list)
    divergence_limit: float | None = None  # what the rollout's desired state carries
    calls: list[str] = field(default_factory=list)
    active: str = "old"
    pending: str | None = None

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

    def download(self, target: TargetInfo, timeout_s: float) -> Path:
        self._call("download")
        return Path("/tmp/x.efb")

    def stage(self, target: TargetInfo, download: Path, timeout_s: float) -> StagedBundle:
        self._call("stage")
        self.pending = "new"
        seq = self.target_sequence if self.staged_sequence is None else self.staged_sequence
        return StagedBundle(target.name, target.version, seq, "ab" * 32, "cd" * 32, "b")

    def attest(self, target: TargetInfo, staged: StagedBundle, timeout_s: float) -> None:
        self._call("attest")
        assert staged.policy_sha256 == "ab" * 32  # the runtime's verified digests

    def shadow(self, timeout_s: float) -> ShadowResult:
        self._call("shadow")
        return self.shadow_result

    def switch(self, timeout_s: float) -> None:
        self._call("switch")
        self.active, self.pending = "new", "old"

    def health_window(self, timeout_s: float) -> None:
        self._call("health")
        if not self.healthy:  # what the runtime does: it judges, and switches back itself
            self.active, self.pending = "old", None
            raise UpdateError(Reason.HEALTH_WINDOW_FAILED, "12/100 tick slots missed")

    def commit(self, timeout_s: float) -> None:
        self._call("commit")
        self.committed_sequence = self.target_sequence
        self.pending = None

    def rollback(self, failure: Failure, timeout_s: float) -> None:
        self.calls.append("rollback")
        self.rollbacks.append(failure)
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
    assert final.state is State.COMMITTED and final.reason is Reason.OK
    assert [s for s, _ in events] == [*PATH, State.COMMITTED]
    assert sim.committed_sequence == 2 and sim.active == "new"
    assert sim.calls == [
        "refresh",
        "download",
        "stage",
        "attest",
        "shadow",
        "switch",
        "health",
        "commit",
    ]
    assert final.staged_bundle().root_digest == "cd" * 32  # what was verified, recorded


def test_shadow_results_travel_with_the_next_event(tmp_path: Path) -> None:
    details: dict[State, str] = {}
    runner = UpdateRunner(
        UpdateStateFile(tmp_path / "update.json"),
        SimRuntime(),
        on_event=lambda rec, st, reason, detail: details.setdefault(st, detail),
    )
    runner.start("pendulum", 2)
    assert "max divergence 0.01" in details[State.SWITCHING]
    assert "100 ticks" in details[State.SWITCHING]


def test_each_state_names_the_step_on_disk_while_it_runs(tmp_path: Path) -> None:
    seen: dict[str, str] = {}
    store = UpdateStateFile(tmp_path / "update.json")

    class Spy(SimRuntime):
        def _call(self, name: str) -> None:
            seen[name] = json.loads(store.path.read_text())["state"]
            super()._call(name)

    UpdateRunner(store, Spy()).start("pendulum", 2)
    assert seen == {
        "refresh": "REFRESHING",
        "download": "DOWNLOADING",
        "stage": "STAGING",
        "attest": "ATTESTING",
        "shadow": "SHADOWING",
        "switch": "SWITCHING",
        "health": "HEALTH_WINDOW",
        "commit": "COMMITTING",
    }


def test_divergent_shadow_is_never_activated_under_the_rollouts_limit(tmp_path: Path) -> None:
    sim = SimRuntime(shadow_result=ShadowResult(100, 3.0, 0.0, 0.5, 0), divergence_limit=0.25)
    runner, _ = _runner(tmp_path, sim)
    final = runner.start("pendulum", 2)
    assert final.state is State.FAILED and final.reason is Reason.SHADOW_DIVERGENCE
    assert final.detail == "max action divergence 3 > 0.25"
    assert runner.store.load().target["max_action_divergence"] == 0.25
    assert "switch" not in sim.calls
    assert sim.active == "old" and sim.pending is None
    assert sim.committed_sequence == 1
    assert sim.rollbacks == [Failure(Reason.SHADOW_DIVERGENCE, final.detail)]


def test_divergence_without_a_limit_is_reported_not_enforced(tmp_path: Path) -> None:
    details: dict[State, str] = {}
    sim = SimRuntime(shadow_result=ShadowResult(100, 0.99, 0.0, 0.5, 0))
    runner = UpdateRunner(
        UpdateStateFile(tmp_path / "update.json"),
        sim,
        on_event=lambda rec, st, reason, detail: details.setdefault(st, detail),
    )
    assert runner.start("pendulum", 2).state is State.COMMITTED
    assert sim.committed_sequence == 2
    assert "max divergence 0.99 (not enforced)" in details[State.SWITCHING]


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


def test_the_runtimes_health_verdict_rolls_back_without_advancing_the_counter(
    tmp_path: Path,
) -> None:
    sim = SimRuntime(healthy=False)
    runner, _ = _runner(tmp_path, sim)
    final = runner.start("pendulum", 2)
    assert final.state is State.ROLLED_BACK
    assert (final.reason, final.detail) == (Reason.HEALTH_WINDOW_FAILED, "12/100 tick slots missed")
    assert sim.active == "old" and sim.committed_sequence == 1
    assert "commit" not in sim.calls


def test_target_not_newer_than_installed_fails_before_download(tmp_path: Path) -> None:
    sim = SimRuntime(committed_sequence=5, target_sequence=5)
    runner, _ = _runner(tmp_path, sim)
    final = runner.start("pendulum", 5)
    assert final.state is State.FAILED and final.reason is Reason.NOT_NEWER
    assert "download" not in sim.calls


def test_a_staged_bundle_that_is_not_the_tuf_target_is_discarded(tmp_path: Path) -> None:
    sim = SimRuntime(staged_sequence=9)
    final = _runner(tmp_path, sim)[0].start("pendulum", 2)
    assert final.state is State.FAILED and final.reason is Reason.BUNDLE_INVALID
    assert "sequence 9" in final.detail and sim.pending is None and "attest" not in sim.calls


@pytest.mark.parametrize(
    ("effect", "reason", "final_state"),
    [
        ("refresh", Reason.TUF_REFRESH_FAILED, State.FAILED),
        ("refresh", Reason.DESIRED_STATE_MISMATCH, State.FAILED),
        ("download", Reason.DISK_FULL, State.FAILED),
        ("stage", Reason.BUNDLE_INVALID, State.FAILED),
        ("attest", Reason.ATTESTATION_INVALID, State.FAILED),
        ("stage", Reason.STAGE_FAILED, State.FAILED),
        ("switch", Reason.UNSAFE_TO_SWITCH, State.ROLLED_BACK),
        ("commit", Reason.COMMIT_FAILED, State.ROLLED_BACK),
    ],
)
def test_a_failing_step_ends_with_its_reason_and_the_old_bundle_active(
    tmp_path: Path, effect: str, reason: Reason, final_state: State
) -> None:
    sim = SimRuntime(fail={effect: UpdateError(reason, "boom")})
    runner, events = _runner(tmp_path, sim)
    final = runner.start("pendulum", 2)
    assert final.state is final_state and final.reason is reason and final.detail == "boom"
    assert events[-1] == (final_state, reason)
    assert sim.active == "old" and sim.committed_sequence == 1


def test_an_unexpected_exception_in_an_effect_fails_cleanly(tmp_path: Path) -> None:
    class Buggy(SimRuntime):
        def shadow(self, timeout_s: float) -> ShadowResult:
            raise ZeroDivisionError("bug")

    sim = Buggy()
    final = _runner(tmp_path, sim)[0].start("pendulum", 2)
    assert final.state is State.FAILED and final.reason is Reason.SHADOW_FAILED
    assert sim.pending is None  # the staged candidate was discarded


def test_second_hint_during_an_update_is_refused(tmp_path: Path) -> None:
    store = UpdateStateFile(tmp_path / "update.json")
    from fleet.update import UpdateRecord

    store.save(UpdateRecord(state=State.DOWNLOADING, bundle_name="pendulum"))
    with pytest.raises(UpdateError, match="already in state DOWNLOADING"):
        UpdateRunner(store, SimRuntime()).start("pendulum", 3)


def test_a_new_update_may_follow_a_committed_one(tmp_path: Path) -> None:
    sim = SimRuntime()
    runner, _ = _runner(tmp_path, sim)
    assert runner.start("pendulum", 2).state is State.COMMITTED
    sim.target_sequence = 3
    assert runner.start("pendulum", 3).state is State.COMMITTED
    assert sim.committed_sequence == 3


@pytest.mark.parametrize("state", list(State))
def test_recovery_plan_never_commits_unseen_health_evidence(state: State) -> None:
    plan = recovery_plan(state)
    if state in (State.SWITCHING, State.HEALTH_WINDOW):
        assert plan is RecoveryAction.ROLLBACK
    elif state is State.COMMITTING:
        assert plan is RecoveryAction.COMMIT
    elif state in (State.IDLE, State.COMMITTED, State.FAILED, State.ROLLED_BACK):
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
    assert sim.committed_sequence == 1  # nothing committed before COMMITTING's effect
    final = UpdateRunner(store, sim).resume()
    assert final.state in (State.COMMITTED, State.ROLLED_BACK)
    if final.state is State.COMMITTED:
        assert sim.active == "new" and sim.committed_sequence == 2
    else:
        assert sim.active == "old" and sim.committed_sequence == 1
        assert final.reason is Reason.AGENT_RESTARTED


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("HINTED", "REFRESHING"),
        ("WARMED", "REFRESHING"),
        ("SHADOW", "REFRESHING"),
        ("SWITCHED", "SWITCHING"),
        ("HEALTH_WINDOW", "HEALTH_WINDOW"),
        ("COMMITTED", "COMMITTING"),  # an earlier agent persisted it before committing
        ("FAILED", "FAILED"),
    ],
)
def test_a_record_of_an_earlier_agent_resumes_safely(tmp_path: Path, old: str, new: str) -> None:
    p = tmp_path / "update.json"
    p.write_text(json.dumps({"state": old, "reason": "WARM_FAILED", "bundle_name": "pendulum"}))
    record = UpdateStateFile(p).load()
    assert record.state.value == new and record.reason is Reason.STAGE_FAILED


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


_TEXT = st.one_of(
    st.sampled_from([*State, *Reason, "HINTED", "WARMED", "COMMITTED", "WARM_FAILED", ""]),
    st.text(max_size=20),
)


@settings(max_examples=200, deadline=None)
@given(
    record=st.dictionaries(
        st.sampled_from(["state", "reason", "detail", "bundle_name", "staged", "target"]),
        st.one_of(_TEXT, st.integers(), st.none(), st.lists(st.integers(), max_size=2)),
        max_size=6,
    )
)
def test_any_state_file_loads_as_a_record_or_is_refused_naming_the_file(
    tmp_path_factory: pytest.TempPathFactory, record: dict[str, object]
) -> None:
    p = tmp_path_factory.mktemp("rec") / "update.json"
    p.write_text(json.dumps(record))
    try:
        loaded = UpdateStateFile(p).load()
    except UpdateStateError as exc:
        assert str(p) in str(exc)
        return
    assert loaded.state in set(State) and loaded.reason in set(Reason)


@given(st.text(max_size=40))
def test_an_unknown_reason_code_from_the_wire_falls_back_to_the_default(code: str) -> None:
    got = Reason.parse(code, Reason.RUNTIME_ERROR)
    assert got is (Reason(code) if code in set(Reason) else Reason.RUNTIME_ERROR)
