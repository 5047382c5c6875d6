"""Randomized crash trials of an update: kill -9 at a random moment, restart, check.

One robot root with a real `edgeflux runtime run` (null adapter) next to a real control
plane (gRPC, mTLS, TUF, signed desired state). Each trial pushes a newer bundle and runs
the agent's real update path (`tests/fleet/_update_driver.py`: the agent's own effects
and state machine, no MQTT — the update starts as a validated hint starts it) as its own
process, then SIGKILLs that process at a random moment: a random state of the update
state machine, a random delay into it (download and commit included; the SIGKILL comes
from a timer the driver arms when that state is persisted, so it lands even inside
steps that take milliseconds). In about one trial in five the runtime is SIGKILLed
right after the agent (power loss) and restarted.
Then the agent's restart path (`UpdateRunner.resume`) runs in a fresh process.

Every trial must end with
- the runtime running a bundle that verifies against the robot's trust store, and that
  bundle is either the committed one from before or the new one — never anything else;
- the new one only with the update COMMITTED and the anti-rollback counter at its
  sequence; the old one only with the counter unchanged;
- a counter that had not advanced at the moment of the kill unless the kill landed in
  COMMITTING (the commit itself) or later.

`EDGEFLUX_CRASH_TRIALS` sets the number of trials of the slow run (default 1000; 30 under CI),
`EDGEFLUX_CRASH_SEED` the seed, `EDGEFLUX_CRASH_SUMMARY` where the summary table (state
killed in → outcome counts) is written (default: the test's tmp dir; always printed).
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud.push import push
from cloud.testing import RunningPlane, running_plane
from fleet.update import PATH, UpdateState, UpdateStateFile
from runtime.antirollback import AntiRollbackStore
from runtime.bundle import verify_bundle
from runtime.control_client import RuntimeControlClient
from runtime.layout import RobotLayout
from runtime.trust import TrustStore
from tests.budgets import slow_budget
from tests.fleet.test_agent_e2e import _make_root, _manifest
from tests.servers import wait_until

pytestmark = [pytest.mark.services]
REPO = Path(__file__).resolve().parents[2]
DEVICE = "crash-robot"
SEED = int(os.environ.get("EDGEFLUX_CRASH_SEED", "20261207"))
SLOW_TRIALS = int(os.environ.get("EDGEFLUX_CRASH_TRIALS", slow_budget(full=1000, ci=30)))
POWER_LOSS_P = 0.2
MAX_DELAY_S = 0.25  # a random delay into the chosen state (longer lands in a later one)


@dataclass
class Rig:
    plane: RunningPlane
    root: Path
    log: Path
    tmp: Path
    runtime: subprocess.Popen[bytes] | None = None
    seq: int = 1
    """The committed sequence (the anti-rollback counter)."""
    version: str = "1.0.0"
    """The committed version."""
    pushed: int = 1
    """The newest sequence pushed (never reused, committed or not)."""

    @property
    def layout(self) -> RobotLayout:
        return RobotLayout.at(self.root)

    def counter(self) -> int:
        return AntiRollbackStore(self.layout.antirollback).committed("pendulum") or 0

    def record_state(self) -> str:
        try:
            return UpdateStateFile(self.layout.agent_state / "update.json").load().state.value
        except Exception:
            return "UNREADABLE"

    def start_runtime(self, bundle: Path | None = None) -> None:
        args = ["runtime", "run", "--root", str(self.root)]
        if bundle is not None:
            args += ["--bundle", str(bundle)]
        self.runtime = _spawn(args, self.log)
        wait_until(self._runtime_ready, 60, "the runtime to serve its socket")

    def _runtime_ready(self) -> bool:
        assert self.runtime is not None
        if self.runtime.poll() is not None:
            raise AssertionError(f"runtime exited {self.runtime.returncode}\n{self.tail()}")
        if not self.layout.runtime_socket.exists():
            return False
        try:
            with RuntimeControlClient(self.layout.runtime_socket, 2) as rt:
                rt.status()
            return True
        except Exception:
            return False

    def status(self):  # type: ignore[no-untyped-def]
        with RuntimeControlClient(self.layout.runtime_socket, 10) as rt:
            return rt.status()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _spawn(
    args: list[str],
    log: Path,
    module: str = "edgeflux.cli",
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    env.pop("EDGEFLUX_FAULT_AGENT_PAUSE_AT", None)
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _bundle(rig: Rig, version: str, seq: int) -> Path:
    from runtime.bundle import create_bundle, sign_bundle
    from runtime.manifest import BundleManifest
    from tests.cloud.conftest import make_policy

    m = _manifest(version, seq)
    m["control"] = {"rate_hz": 50, "deadline_ms": 18}
    out = rig.tmp / "bundles" / f"pendulum-{version}"
    policy = make_policy(rig.tmp / "bundles" / f".{version}.onnx", seed=0)
    create_bundle(policy, BundleManifest.model_validate(m), out)
    sign_bundle(out, rig.plane.home.key_path("model-signing", private=True))
    return out


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("crash")
    (tmp / "bundles").mkdir()
    with running_plane(tmp / "plane") as plane:
        root = tmp / DEVICE
        _make_root(plane, root, DEVICE, broker_port=1)  # no broker: the update is driven
        layout = RobotLayout.at(root)
        layout.agent_config.write_text(
            "[agent]\n"
            f'device_id = "{DEVICE}"\nmqtt_port = 1\ngrpc_target = "{plane.address}"\n'
            "shadow_ticks = 10\nhealth_window_ticks = 15\n"
        )
        r = Rig(plane, root, tmp / "robot.log", tmp)
        first = _bundle(r, "1.0.0", 1)
        r.start_runtime(first)
        try:
            yield r
        finally:
            if r.runtime is not None and r.runtime.poll() is None:
                r.runtime.terminate()
                try:
                    r.runtime.wait(20)
                except subprocess.TimeoutExpired:
                    r.runtime.kill()
                    r.runtime.wait(5)


@dataclass(frozen=True)
class Trial:
    n: int
    aimed_at: str
    killed_in: str
    power_loss: bool
    outcome: str  # COMMITTED | ROLLED_BACK | FAILED | NOT_STARTED | FINISHED_BEFORE_KILL
    problems: tuple[str, ...]


def _run_driver(rig: Rig, *args: str, timeout_s: float = 120.0) -> None:
    proc = _spawn([str(rig.root), *args], rig.log, module="tests.fleet._update_driver")
    try:
        rc = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise AssertionError(f"update driver {args} did not finish in {timeout_s} s") from None
    assert rc == 0, f"update driver {args} exited {rc}\n{rig.tail()}"


def _one_trial(rig: Rig, n: int, rng: random.Random) -> Trial:
    old_version, old_seq = rig.version, rig.seq
    assert rig.counter() == old_seq
    seq = rig.pushed = rig.pushed + 1
    version = f"1.{seq}.0"
    bundle = _bundle(rig, version, seq)
    result = push(rig.plane.home, rig.plane.store, str(bundle), device_ids=[DEVICE])
    generation = result.generations[DEVICE]

    aimed = rng.choice(PATH)
    # Half the kills land within 20 ms (inside the short steps), half within 250 ms.
    delay = rng.choice((0.02, 0.25)) * rng.random()
    power_loss = rng.random() < POWER_LOSS_P
    driver = _spawn(
        [str(rig.root), "start", "pendulum", str(seq), str(generation)],
        rig.log,
        module="tests.fleet._update_driver",
        env={"EDGEFLUX_TRIAL_KILL_AT": f"{aimed.value}:{delay:.6f}"},
    )
    try:
        rc = driver.wait(90)
    except subprocess.TimeoutExpired:
        driver.send_signal(signal.SIGKILL)
        rc = driver.wait(10)
    if power_loss and rig.runtime is not None:
        rig.runtime.send_signal(signal.SIGKILL)  # right after the agent died
    finished = rc == 0
    assert finished or rc == -signal.SIGKILL, f"update driver exited {rc}\n{rig.tail()}"
    killed_in = rig.record_state()
    problems: list[str] = []
    counter_at_kill = rig.counter()
    if killed_in not in ("COMMITTING", "COMMITTED") and counter_at_kill != old_seq:
        problems.append(f"counter advanced to {counter_at_kill} before commit ({killed_in})")

    if power_loss and rig.runtime is not None:
        rig.runtime.wait(10)
        rig.start_runtime()
    _run_driver(rig, "resume")

    record = UpdateStateFile(rig.layout.agent_state / "update.json").load()
    st = rig.status()
    active = st.active.bundle
    counter = rig.counter()
    if st.state not in ("running", "rolled_back"):  # rolled_back: running the old one
        problems.append(f"runtime is {st.state!r} after the update ended")
    try:
        verify_bundle(rig.layout.slot(st.active.slot), TrustStore(rig.layout.trust))
    except Exception as exc:
        problems.append(f"active slot {st.active.slot} does not verify: {exc}")
    committed = record.state is UpdateState.COMMITTED and record.hint_sequence == seq
    if (active.version, active.sequence) == (version, seq):
        if not committed or counter != seq:
            problems.append(f"new bundle active but record {record.state} counter {counter}")
    elif (active.version, active.sequence) == (old_version, old_seq):
        if committed or counter != old_seq:
            problems.append(f"old bundle active but record {record.state} counter {counter}")
    else:
        problems.append(f"active bundle {active.version} ({active.sequence}) is neither")
    if finished:
        outcome = "FINISHED_BEFORE_KILL"
    elif record.hint_sequence != seq:
        outcome = "NOT_STARTED"
    else:
        outcome = record.state.value
    rig.version, rig.seq = active.version, counter
    return Trial(n, aimed.value, killed_in, power_loss, outcome, tuple(problems))


def _summary(trials: list[Trial], seed: int, seconds: float) -> str:
    outcomes = ("COMMITTED", "ROLLED_BACK", "FAILED", "NOT_STARTED", "FINISHED_BEFORE_KILL")
    by_state: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for t in trials:
        by_state[t.killed_in][t.outcome] += 1
        by_state[t.killed_in]["power loss"] += t.power_loss
        by_state[t.killed_in]["bricked"] += bool(t.problems)
    order = [s.value for s in PATH] + ["COMMITTED", "FAILED", "ROLLED_BACK", "NOT_STARTED"]
    cols = ("trials", "power loss", *(o.lower().replace("_", " ") for o in outcomes), "bricked")
    lines = [
        f"crash trials: {len(trials)} (seed {seed}, {seconds:.0f} s)",
        "",
        "| killed in | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for state in sorted(by_state, key=lambda s: order.index(s) if s in order else 99):
        c = by_state[state]
        total = sum(c[o] for o in outcomes)
        row = [total, c["power loss"], *(c[o] for o in outcomes), c["bricked"]]
        lines.append(f"| {state} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _trials(rig: Rig, count: int, seed: int, summary_path: Path) -> None:
    rng = random.Random(seed)
    trials: list[Trial] = []
    t0 = time.monotonic()
    for n in range(count):
        trials.append(_one_trial(rig, n, rng))
        if n % 50 == 49:  # a long run shows its progress in the summary file
            summary_path.write_text(_summary(trials, seed, time.monotonic() - t0))
    table = _summary(trials, seed, time.monotonic() - t0)
    summary_path.write_text(table)
    print(table)
    bad = [t for t in trials if t.problems]
    assert not bad, (
        f"{len(bad)} trials ended in a half state:\n"
        + "\n".join(
            f"#{t.n} aimed {t.aimed_at} killed in {t.killed_in}: {'; '.join(t.problems)}"
            for t in bad[:10]
        )
        + f"\n{table}\n{rig.tail()}"
    )
    # the kills are spread over the state machine, not bunched in its slow steps
    assert len({t.killed_in for t in trials}) >= min(5, count), table


def _summary_path(tmp_path: Path) -> Path:
    env = os.environ.get("EDGEFLUX_CRASH_SUMMARY")
    return Path(env) if env else tmp_path / "crash_trials.md"


@pytest.mark.timeout(600)
def test_fifty_random_kill_9_trials_end_on_a_verified_bundle(rig: Rig, tmp_path: Path) -> None:
    _trials(rig, 50, SEED, _summary_path(tmp_path))


@pytest.mark.slow
@pytest.mark.timeout(60 + 15 * SLOW_TRIALS)
def test_a_thousand_random_kill_9_trials_end_on_a_verified_bundle(rig: Rig, tmp_path: Path) -> None:
    _trials(rig, SLOW_TRIALS, SEED + 1, _summary_path(tmp_path))
