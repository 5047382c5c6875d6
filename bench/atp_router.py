"""ATP routing benchmark: the real `cloud.router.Router` against four baselines in one
seeded discrete-event simulation with the same simulated backends.

Usage::

    .venv/bin/python bench/atp_router.py               # full run (~1 min), table + JSON + PNG
    .venv/bin/python bench/atp_router.py --quick       # shorter phases, for a smoke check

Backends (simulated FIFO queues, see `cloud/router/simulation.py`): a cheap small
model (tier 0), a mid model (tier 1), a second mid model that fails half its calls
(tier 1), and a GPU world-model planner with a capacity knee (tier 2). The verifier is
in-process and sees the truth through noise. 1,000 robots in 10 sites send verify
(SAFETY, 300 ms), plan (INTERACTIVE, 1 s) and batch (BATCH, 10 s) tasks.

Load steps 0.5×, 1×, 1.5×, 2×, 2.5× of the nominal capacity, then at 1×: a 4× burst,
a planner brown-out (latency ×3) and a recovery window. Baselines: round robin,
least-busy, always-largest, and a static cheap → large cascade without limits; none
of them has admission, so they never shed, and a robot gives up at its deadline.
ATP propagates each call's deadline to the backend (as a gRPC deadline does), which
stops there and bills only the time it worked; the baselines do not propagate
deadlines (part of what "without limits" means), so their late work runs on and bills.
Costs are what the simulated backends bill, for every call, wasted ones included.

A second scenario in the same run, "features": the same backends, but half the tasks
are hard (a difficulty feature the task carries as its first observation value) and
the cheap tiers are often wrong on them. There today's router (cascade from the
cheapest tier) runs against the learning router (the same router with
`cloud.router.learning.LearnedStart`: a contextual bandit over task type, class and
difficulty bucket, learning from verifier outcomes which tier to start at) and a
RouteLLM-style threshold router (one call: the strong model when a win-rate predictor,
calibrated offline on labelled samples, says the weak one is more likely wrong than
right, else the weak one; no verifier, no escalation, no admission), at a steady 0.8×
load, learning included (no warm-up excluded).

Metrics per policy: goodput (verified-correct answers within deadline per second),
p50/p99 latency and SLO-miss rate per class, cost per good answer, budget overrun
(site-9 has a tight budget that only ATP enforces), wrong-accept rate, shed rate per
class, recovery time after the brown-out, and (ATP) router decision overhead.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from cloud.router import (  # noqa: E402
    Answer,
    BackendSpec,
    Budget,
    MemoryLedger,
    Outcome,
    PriceModel,
    Qos,
    Registry,
    Result,
    Router,
    RouterConfig,
    Scope,
    Task,
)
from cloud.router.audit import AuditLog  # noqa: E402
from cloud.router.learning import LearnedStart  # noqa: E402
from cloud.router.simulation import (  # noqa: E402
    EventLoop,
    RouterPolicy,
    SimBackend,
    SimBackendSpec,
    SimVerifier,
    Truth,
    make_task,
    percentile,
)

CAPACITY = 200.0  # tasks/s at load 1.0 (nominal; see the docstring)
MIX = [  # task type, qos, share, deadline (s), work units
    ("verify", Qos.SAFETY, 0.2, 0.3, 1.0),
    ("plan", Qos.INTERACTIVE, 0.5, 1.0, 2.0),
    ("batch", Qos.BATCH, 0.3, 10.0, 4.0),
]
DEADLINE = {q: d for _, q, _, d, _ in MIX}
TYPES = ("verify", "plan", "batch")
ROBOTS = 1000
SITES = 10
TIGHT_SITE = "site-9"
TIGHT_SITE_USD = 1.0
SAFETY_ALLOWANCE_USD = 0.1


def backends() -> list[SimBackendSpec]:
    def q(v: float, p: float, b: float) -> dict[str, float]:
        return {"verify": v, "plan": p, "batch": b}

    small = BackendSpec(
        "small",
        0,
        frozenset(TYPES),
        PriceModel(per_call_usd=0.0002, per_work_unit_usd=0.0001),
        capacity=8,
        quality=q(0.92, 0.75, 0.8),
        latency_s_per_work_unit=0.02,
        timeout_s=10,
    )
    mid = BackendSpec(
        "mid",
        1,
        frozenset(TYPES),
        PriceModel(per_call_usd=0.002),
        capacity=4,
        quality=q(0.96, 0.9, 0.92),
        latency_s_per_work_unit=0.06,
        timeout_s=10,
    )
    flaky = BackendSpec(
        "mid-b",
        1,
        frozenset(TYPES),
        PriceModel(per_call_usd=0.002),
        capacity=4,
        quality=q(0.96, 0.9, 0.92),
        latency_s_per_work_unit=0.06,
        timeout_s=10,
    )
    planner = BackendSpec(
        "planner",
        2,
        frozenset(TYPES),
        PriceModel(per_gpu_second_usd=0.05),
        capacity=12,
        quality=q(0.99, 0.98, 0.98),
        latency_s_per_work_unit=0.08,
        timeout_s=10,
    )
    return [
        SimBackendSpec(small, 8, 0.02, dict(small.quality)),
        SimBackendSpec(mid, 4, 0.06, dict(mid.quality)),
        SimBackendSpec(flaky, 4, 0.06, dict(flaky.quality), fail_prob=0.5),
        SimBackendSpec(planner, 24, 0.08, dict(planner.quality), knee=12),
    ]


# --------------------------------------------------------------------------- baselines


class _Baseline:
    """Dispatches without admission, limits or budgets; the robot gives up at its deadline."""

    name = "baseline"

    def __init__(self, loop: EventLoop, sims: dict[str, SimBackend], verifier: SimVerifier):
        self.loop, self.sims, self.verifier = loop, sims, verifier
        self.order = list(sims)
        self.in_flight = {n: 0 for n in sims}

    def choose(self, task: Task, tried: list[str]) -> str | None:
        raise NotImplementedError

    def submit(self, task: Task, done: Callable[[Result], None]) -> None:
        self._go(task, done, [], self.loop.now)

    def _go(self, task: Task, done: Callable[[Result], None], tried: list[str], t0: float) -> None:
        name = self.choose(task, tried)
        if name is None:
            done(Result(task.task_id, Outcome.FAILED, "exhausted", latency_s=self.loop.now - t0))
            return
        tried.append(name)
        self.in_flight[name] += 1

        def reply(a: Answer) -> None:
            self.in_flight[name] -= 1
            self.on_answer(task, done, tried, t0, name, a)

        self.sims[name].call(task, reply)

    def on_answer(
        self,
        task: Task,
        done: Callable[[Result], None],
        tried: list[str],
        t0: float,
        name: str,
        a: Answer,
    ) -> None:
        out = Outcome.OK if a.ok else Outcome.FAILED
        done(Result(task.task_id, out, "", backend=name, answer=a, latency_s=self.loop.now - t0))


class RoundRobin(_Baseline):
    name = "round_robin"
    _i = 0

    def choose(self, task: Task, tried: list[str]) -> str | None:
        self._i += 1
        return self.order[self._i % len(self.order)]


class LeastBusy(_Baseline):
    name = "least_busy"

    def choose(self, task: Task, tried: list[str]) -> str | None:
        return min(self.order, key=lambda n: self.in_flight[n] / self.sims[n].sim.servers)


class AlwaysLargest(_Baseline):
    name = "always_largest"

    def choose(self, task: Task, tried: list[str]) -> str | None:
        return "planner"


class StaticCascade(_Baseline):
    """small → mid → planner, escalating on a verifier rejection, no limits."""

    name = "cascade"
    chain = ("small", "mid", "planner")

    def choose(self, task: Task, tried: list[str]) -> str | None:
        return self.chain[len(tried)] if len(tried) < len(self.chain) else None

    def on_answer(
        self,
        task: Task,
        done: Callable[[Result], None],
        tried: list[str],
        t0: float,
        name: str,
        a: Answer,
    ) -> None:
        v = self.verifier.verify(task, a) if a.ok else None
        if v is not None and v.hard_ok and v.score >= 0.6:
            done(
                Result(
                    task.task_id,
                    Outcome.OK,
                    "",
                    backend=name,
                    answer=a,
                    latency_s=self.loop.now - t0,
                )
            )
        elif len(tried) < len(self.chain):
            self._go(task, done, tried, t0)
        else:
            done(Result(task.task_id, Outcome.FAILED, "rejected", latency_s=self.loop.now - t0))


# --------------------------------------------------------------------------- features scenario

# Accuracy on (easy, hard) tasks. Each backend declares one quality per task type, the
# average over both kinds (what an offline per-type evaluation would report).
FEATURE_ACCURACY = {
    "small": {"verify": (0.97, 0.6), "plan": (0.95, 0.25), "batch": (0.95, 0.3)},
    "mid": {"verify": (0.99, 0.9), "plan": (0.97, 0.8), "batch": (0.97, 0.85)},
    "mid-b": {"verify": (0.99, 0.9), "plan": (0.97, 0.8), "batch": (0.97, 0.85)},
    "planner": {"verify": (0.99, 0.97), "plan": (0.99, 0.97), "batch": (0.99, 0.97)},
}
FEATURE_LOAD = 0.8


def feature_backends() -> list[SimBackendSpec]:
    from dataclasses import replace

    out = []
    for b in backends():
        acc = FEATURE_ACCURACY[b.spec.name]
        declared = {t: round((e + h) / 2, 4) for t, (e, h) in acc.items()}
        out.append(
            replace(
                b,
                spec=replace(b.spec, quality=declared),
                accuracy={t: e for t, (e, _) in acc.items()},
                hard_accuracy={t: h for t, (_, h) in acc.items()},
            )
        )
    return out


def difficulty_bucket(task: Task) -> int:
    return min(3, int(task.observation[0] * 4)) if task.observation else 0


def task_features(task: Task) -> tuple[str, int, int]:
    """What the learning router sees: type, class and the difficulty bucket."""
    return (task.task_type, int(task.qos), difficulty_bucket(task))


class ThresholdRouter(_Baseline):
    """RouteLLM-style: one call, to the strong model when the predicted chance that the
    weak one is wrong exceeds `alpha`. The predictor is a per-(type, difficulty bucket)
    rate calibrated on `samples` labelled draws (its offline training data)."""

    name = "routellm"
    weak, strong, alpha = "small", "planner", 0.5

    def __init__(
        self,
        loop: EventLoop,
        sims: dict[str, SimBackend],
        verifier: SimVerifier,
        samples: int = 400,
        seed: int = 99,
    ) -> None:
        super().__init__(loop, sims, verifier)
        rng = random.Random(seed)
        weak = next(b for b in feature_backends() if b.spec.name == self.weak)
        self.p_wrong: dict[tuple[str, int], float] = {}
        for tt in TYPES:
            for bucket in range(4):
                hard = bucket >= 2
                assert weak.hard_accuracy is not None
                acc = (weak.hard_accuracy if hard else weak.accuracy)[tt]
                wrong = sum(rng.random() >= acc for _ in range(samples))
                self.p_wrong[(tt, bucket)] = wrong / samples

    def choose(self, task: Task, tried: list[str]) -> str | None:
        if tried:
            return None
        p = self.p_wrong[(task.task_type, difficulty_bucket(task))]
        return self.strong if p > self.alpha else self.weak


# --------------------------------------------------------------------------- scenario


@dataclass
class Rec:
    task: Task
    t: float
    site: str
    result: Result | None = None
    correct: bool = False


@dataclass
class Run:
    name: str
    recs: list[Rec] = field(default_factory=list)
    usd: float = 0.0
    site_usd: float = 0.0
    overhead_us: list[float] = field(default_factory=list)
    overhead_wall_us: list[float] = field(default_factory=list)
    submit_us: list[float] = field(default_factory=list)
    audit_us_per_record: float = 0.0
    overruns: int = 0
    limits: list[tuple[float, float]] = field(default_factory=list)
    notes: dict[str, float] = field(default_factory=dict)


def phases(quick: bool) -> tuple[list[tuple[float, float, float]], dict[str, float]]:
    """(start, end, load) segments and the event times."""
    step = 3.0 if quick else 6.0
    segs, t = [], 0.0
    for load in (0.5, 1.0, 1.5, 2.0, 2.5):
        segs.append((t, t + step, load))
        t += step
    ev = {"calm_start": t, "burst": t + step / 2, "burst_end": t + step / 2 + 2.0}
    ev["brownout"] = ev["burst_end"] + step
    ev["brownout_end"] = ev["brownout"] + (4.0 if quick else 8.0)
    ev["end"] = ev["brownout_end"] + (5.0 if quick else 10.0)
    segs.append((t, ev["burst"], 1.0))
    segs.append((ev["burst"], ev["burst_end"], 4.0))
    segs.append((ev["burst_end"], ev["end"], 1.0))
    return segs, ev


def feature_phases(quick: bool) -> tuple[list[tuple[float, float, float]], dict[str, float]]:
    end = 15.0 if quick else 40.0
    return [(0.0, end, FEATURE_LOAD)], {"end": end}


def simulate(policy_name: str, seed: int, quick: bool, features: bool = False) -> Run:
    loop = EventLoop()
    truth = Truth()
    rng = random.Random(seed)
    specs = feature_backends() if features else backends()
    sims = {b.spec.name: SimBackend(b, loop, truth, seed * 100 + i) for i, b in enumerate(specs)}
    verifier = SimVerifier(truth, seed + 7)
    segs, ev = feature_phases(quick) if features else phases(quick)
    if not features:
        sims["planner"].brownouts.append((ev["brownout"], ev["brownout_end"], 3.0))
    run = Run(policy_name)
    ledger = MemoryLedger()
    policy: RouterPolicy | _Baseline
    router: Router | None = None
    if policy_name in ("atp", "learning"):
        ledger.set_budget(Budget("fleet", 1e6))
        ledger.set_budget(
            Budget(f"fleet/{TIGHT_SITE}", TIGHT_SITE_USD, safety_allowance_usd=SAFETY_ALLOWANCE_USD)
        )
        audit = AuditLog(Ed25519PrivateKey.generate(), every_n=256, every_s=1e9, clock=loop.clock)
        router = Router(
            Registry(b.spec for b in specs),
            ledger,
            config=RouterConfig(seed=seed),
            clock=loop.clock,
            verifier=verifier,
            audit=audit,
            selector=LearnedStart(task_features, seed=seed) if policy_name == "learning" else None,
        )
        policy = RouterPolicy(router, loop, sims)
    else:
        cls = {
            c.name: c
            for c in (RoundRobin, LeastBusy, AlwaysLargest, StaticCascade, ThresholdRouter)
        }
        policy = cls[policy_name](loop, sims, verifier)

    n = 0

    def arrive() -> None:
        nonlocal n
        now = loop.now
        load = next((ld for a, b, ld in segs if a <= now < b), None)
        if load is None:
            return
        n += 1
        r = rng.random()
        acc, choice = 0.0, MIX[-1]
        for m in MIX:
            acc += m[2]
            if r < acc:
                choice = m
                break
        tt, qos, _, deadline, wu = choice
        robot = rng.randrange(ROBOTS)
        site = f"site-{robot % SITES}"
        task = make_task(
            rng,
            truth,
            f"t{n}",
            tt,
            qos,
            now,
            deadline,
            wu,
            Scope("fleet", site, f"robot-{robot}"),
            difficulty=rng.random() if features else None,
        )
        rec = Rec(task, now, site)
        run.recs.append(rec)

        def done(res: Result, rec: Rec = rec) -> None:
            if rec.result is None:
                rec.result = res
                rec.correct = res.answer is not None and truth.is_correct(rec.task, res.answer)

        policy.submit(task, done)
        loop.at(now + rng.expovariate(CAPACITY * load), arrive)

    loop.at(0.0, arrive)
    t = 0.0
    while t < ev["end"] + 1.0:
        t += 0.25
        loop.run_until(t)
        if router is not None:
            run.limits.append((t, router.backends["planner"].limiter.limit))
    loop.run_until(ev["end"] + 15.0)  # let stragglers finish (counted late)
    run.usd = sum(s.usd for s in sims.values())
    run.site_usd = sum(s.usd_by_site.get(TIGHT_SITE, 0.0) for s in sims.values())
    if isinstance(policy, RouterPolicy):
        policy.flush()
        run.overhead_us = [x * 1e6 for x in policy.overhead_s]
        run.overhead_wall_us = [x * 1e6 for x in policy.overhead_wall_s]
        run.submit_us = [x * 1e6 for x in policy.overhead_by_kind["submit"]]
        n_rec = sum(n for n, _ in policy.audit_flush_s)
        run.audit_us_per_record = sum(t for _, t in policy.audit_flush_s) * 1e6 / max(1, n_rec)
        run.overruns = ledger.overruns
        sel = policy.router.selector
        if sel is not None:
            run.notes["learned_start_share"] = sel.promoted / max(1, sel.decisions)
            run.notes["below_floor_share"] = sel.cleared / max(1, len(run.recs))
    return run


# --------------------------------------------------------------------------- metrics


def good(rec: Rec) -> bool:
    r = rec.result
    return (
        r is not None
        and r.outcome is Outcome.OK
        and rec.correct
        and r.latency_s <= DEADLINE[rec.task.qos] + 1e-9
    )


def window_metrics(run: Run, t0: float, t1: float) -> dict[str, float]:
    recs = [r for r in run.recs if t0 <= r.t < t1]
    out: dict[str, float] = {"goodput": sum(good(r) for r in recs) / (t1 - t0)}
    for qos in Qos:
        cls = [r for r in recs if r.task.qos is qos]
        served = [
            r
            for r in cls
            if r.result is not None
            and r.result.outcome not in (Outcome.REJECTED, Outcome.BUDGET_EXHAUSTED)
        ]
        lat = [r.result.latency_s if r.result else math.inf for r in served]
        # A task never answered counts as infinitely late.
        lat += [math.inf for r in cls if r.result is None]
        shed = sum(
            1
            for r in cls
            if r.result is not None
            and r.result.outcome in (Outcome.REJECTED, Outcome.BUDGET_EXHAUSTED)
        )
        miss = sum(1 for r in served if not good(r)) + sum(1 for r in cls if r.result is None)
        name = qos.name.lower()
        out[f"{name}_p50_ms"] = percentile(lat, 0.5) * 1000
        out[f"{name}_p99_ms"] = percentile(lat, 0.99) * 1000
        out[f"{name}_shed"] = shed / max(1, len(cls))
        out[f"{name}_slo_miss"] = miss / max(1, len(cls))
    oks = [r for r in recs if r.result is not None and r.result.outcome is Outcome.OK]
    out["wrong_accept"] = sum(1 for r in oks if not r.correct) / max(1, len(oks))
    out["accepted_accuracy"] = 1 - out["wrong_accept"]
    return out


def recovery_s(run: Run, ev: dict[str, float]) -> float:
    def rate(t0: float, t1: float) -> float:
        return sum(good(r) for r in run.recs if t0 <= r.t < t1) / (t1 - t0)

    before = rate(ev["brownout"] - 3.0, ev["brownout"])
    t = ev["brownout_end"]
    while t < ev["end"] - 1.0:
        if rate(t, t + 1.0) >= 0.9 * before:
            return t - ev["brownout_end"]
        t += 0.5
    return math.inf


def intrinsic_overhead(seed: int, repeats: int) -> dict[str, float]:
    """Per-call router CPU time with scheduler noise removed.

    The simulation is deterministic, so `repeats` runs make the same router calls in
    the same order; each call's minimum over the runs estimates its intrinsic cost
    (timeit's rule), and the percentiles are taken over calls.
    """
    runs = [simulate("atp", seed, quick=True).overhead_us for _ in range(repeats)]
    n = min(len(r) for r in runs)
    same = all(len(r) == len(runs[0]) for r in runs)
    best = sorted(min(r[i] for r in runs) for i in range(n))
    return {
        "calls": float(n),
        "deterministic": float(same),
        "p50_us": percentile(best, 0.5),
        "p99_us": percentile(best, 0.99),
        "p999_us": percentile(best, 0.999),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter phases")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--overhead-repeats", type=int, default=5, help="runs for the intrinsic overhead"
    )
    ap.add_argument("--png", type=Path, default=REPO / "bench" / "out" / "atp_router.png")
    args = ap.parse_args()
    segs, ev = phases(args.quick)
    policies = ["atp", "round_robin", "least_busy", "always_largest", "cascade"]
    runs: dict[str, Run] = {}
    wall = {}
    for p in policies:
        t0 = time.perf_counter()
        runs[p] = simulate(p, args.seed, args.quick)
        wall[p] = time.perf_counter() - t0
    loads = [ld for _, _, ld in segs[:5]]
    per_load: dict[str, dict[float, dict[str, float]]] = {}
    for p, run in runs.items():
        per_load[p] = {}
        for a, b, ld in segs[:5]:
            per_load[p][ld] = window_metrics(run, a + 1.0, b)  # skip 1 s of transient
    summary: dict[str, dict[str, float]] = {}
    for p, run in runs.items():
        whole = window_metrics(run, 0.0, ev["end"])
        n_good = sum(good(r) for r in run.recs)
        summary[p] = {
            "goodput_at_1x": per_load[p][1.0]["goodput"],
            "goodput_at_2x": per_load[p][2.0]["goodput"],
            "goodput_2x_over_1x": per_load[p][2.0]["goodput"]
            / max(1e-9, per_load[p][1.0]["goodput"]),
            "interactive_p99_ms_at_2x": per_load[p][2.0]["interactive_p99_ms"],
            "cost_per_good_usd": run.usd / max(1, n_good),
            "cost_per_good_usd_at_0.5x": _cost_window(run, segs[0]),
            "accepted_accuracy_at_0.5x": per_load[p][0.5]["accepted_accuracy"],
            "wrong_accept": whole["wrong_accept"],
            "site9_spend_usd": run.site_usd,
            # Over the limit plus the SAFETY allowance (the allowance is part of the budget).
            "budget_overrun_usd": max(0.0, run.site_usd - TIGHT_SITE_USD - SAFETY_ALLOWANCE_USD),
            "recovery_s": recovery_s(run, ev),
            **{k: whole[k] for k in whole if k.endswith(("_shed", "_slo_miss"))},
            "sim_wall_s": wall[p],
        }
    atp = runs["atp"]
    ov = sorted(atp.overhead_us)
    summary["atp"]["decision_p50_us"] = percentile(ov, 0.5)
    summary["atp"]["decision_p99_us"] = percentile(ov, 0.99)
    summary["atp"]["admission_p99_us"] = percentile(atp.submit_us, 0.99)
    summary["atp"]["decision_wall_p99_us"] = percentile(atp.overhead_wall_us, 0.99)
    summary["atp"]["audit_us_per_record"] = atp.audit_us_per_record
    intrinsic = intrinsic_overhead(args.seed, args.overhead_repeats)
    summary["atp"]["decision_intrinsic_p50_us"] = intrinsic["p50_us"]
    summary["atp"]["decision_intrinsic_p99_us"] = intrinsic["p99_us"]
    summary["atp"]["decision_intrinsic_deterministic"] = intrinsic["deterministic"]

    # ------------------------------------------------------------------ table
    print(
        "ATP routing benchmark (seeded discrete-event simulation; one process; "
        "machine shared with other work, so overhead µs are contended)"
    )
    print(
        f"nominal capacity {CAPACITY:.0f} tasks/s, {ROBOTS} robots, loads {loads}, "
        f"4× burst, planner brown-out ×3 for {ev['brownout_end'] - ev['brownout']:.0f} s, "
        "mid-b fails 50 % of calls\n"
    )
    hdr = f"{'policy':<15}" + "".join(f"{'gp@' + str(ld):>9}" for ld in loads)
    hdr += f"{'p99I@2x':>9}{'2x/1x':>7}{'$/good':>9}{'acc':>7}{'overrun$':>9}{'recov_s':>8}"
    print("goodput (good answers/s) per load, INTERACTIVE p99 (ms) at 2×, cost per good answer")
    print(hdr)
    for p in policies:
        s = summary[p]
        row = f"{p:<15}" + "".join(f"{per_load[p][ld]['goodput']:>9.1f}" for ld in loads)
        row += (
            f"{s['interactive_p99_ms_at_2x']:>9.0f}{s['goodput_2x_over_1x']:>7.2f}"
            f"{s['cost_per_good_usd']:>9.5f}{s['accepted_accuracy_at_0.5x']:>7.3f}"
            f"{s['budget_overrun_usd']:>9.3f}{s['recovery_s']:>8.1f}"
        )
        print(row)
    print("\nper class over the whole run: shed rate / SLO-miss rate")
    for p in policies:
        s = summary[p]
        print(
            f"{p:<15}"
            + "  ".join(
                f"{q}: shed {s[q + '_shed']:.2f} miss {s[q + '_slo_miss']:.2f}"
                for q in ("safety", "interactive", "batch")
            )
            + f"  wrong-accept {s['wrong_accept']:.3f}"
        )
    sa, lg = summary["atp"], summary["always_largest"]
    ratios = {
        "atp_goodput_2x_over_1x": sa["goodput_2x_over_1x"],
        "round_robin_goodput_2x_over_atp_1x": summary["round_robin"]["goodput_at_2x"]
        / max(1e-9, sa["goodput_at_1x"]),
        "atp_cost_per_good_over_always_largest_at_0.5x": sa["cost_per_good_usd_at_0.5x"]
        / max(1e-12, lg["cost_per_good_usd_at_0.5x"]),
        "atp_cost_per_good_over_always_largest_overall": sa["cost_per_good_usd"]
        / max(1e-12, lg["cost_per_good_usd"]),
    }
    goals = {
        "interactive_p99_within_deadline_at_2x": sa["interactive_p99_ms_at_2x"]
        <= DEADLINE[Qos.INTERACTIVE] * 1000,
        "goodput_2x_ge_90pct_of_1x": sa["goodput_2x_over_1x"] >= 0.9,
        # Collapse: most of its tasks miss their deadline and INTERACTIVE p99 is a
        # multiple of the deadline (its goodput does not reach zero here because a
        # quarter of its traffic lands on the fast small model).
        "round_robin_collapses_at_2x": per_load["round_robin"][2.0]["interactive_slo_miss"] > 0.5
        and summary["round_robin"]["interactive_p99_ms_at_2x"]
        > 10 * DEADLINE[Qos.INTERACTIVE] * 1000,
        "cost_per_good_le_50pct_of_always_largest": ratios[
            "atp_cost_per_good_over_always_largest_at_0.5x"
        ]
        <= 0.5,
        "equal_accepted_accuracy": sa["accepted_accuracy_at_0.5x"]
        >= lg["accepted_accuracy_at_0.5x"] - 0.02,
        "zero_budget_overrun": sa["budget_overrun_usd"] == 0.0 and atp.overruns == 0,
        # Judged on the intrinsic cost (min over identical runs); the raw contended
        # figures are printed beside it.
        "decision_p99_lt_100us": sa["decision_intrinsic_p99_us"] < 100.0
        and bool(sa["decision_intrinsic_deterministic"]),
    }
    print("\nratios:", ", ".join(f"{k} = {v:.3f}" for k, v in ratios.items()))
    import os

    print(
        f"ATP decision overhead per router call (thread CPU time; submit, answer, tick): "
        f"p50 {sa['decision_p50_us']:.1f} µs, p99 {sa['decision_p99_us']:.1f} µs over "
        f"{len(ov)} calls; submit alone p99 {sa['admission_p99_us']:.1f} µs; wall-clock p99 "
        f"{sa['decision_wall_p99_us']:.1f} µs; audit hashing off the decision path "
        f"{sa['audit_us_per_record']:.1f} µs/record; load average now "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"intrinsic (per call, min over {args.overhead_repeats} identical runs): "
        f"p50 {sa['decision_intrinsic_p50_us']:.1f} µs, "
        f"p99 {sa['decision_intrinsic_p99_us']:.1f} µs "
        f"(identical call sequences: {bool(sa['decision_intrinsic_deterministic'])})"
    )
    feat = features_scenario(args.seed, args.quick)
    ratios.update(feat["ratios"])
    goals.update(feat["goals"])
    print("goals:", ", ".join(f"{k}: {'MET' if v else 'MISSED'}" for k, v in goals.items()))
    _plot(args.png, loads, per_load, policies, runs, ev)
    print(
        json.dumps(
            {
                "bench": "atp_router",
                "seed": args.seed,
                "quick": args.quick,
                "summary": _clean(summary),
                "features_summary": _clean(feat["summary"]),
                "ratios": ratios,
                "goals": goals,
                "png": str(args.png),
            }
        )
    )


def features_scenario(seed: int, quick: bool) -> dict[str, dict[str, float]]:
    """Today's router, the learning router and a RouteLLM-style router on hard and easy
    tasks (see the docstring); prints its table, returns summary, ratios and goals."""
    _, ev = feature_phases(quick)
    names = ["atp", "learning", "routellm"]
    summary: dict[str, dict[str, float]] = {}
    for p in names:
        run = simulate(p, seed, quick, features=True)
        whole = window_metrics(run, 0.0, ev["end"])
        late = window_metrics(run, ev["end"] / 3, ev["end"])
        n_good = sum(good(r) for r in run.recs)
        late_recs = [r for r in run.recs if r.t >= ev["end"] / 3]
        summary[p] = {
            "goodput": whole["goodput"],
            "cost_per_good_usd": run.usd / max(1, n_good),
            "slo_miss": sum(1 for r in run.recs if not good(r)) / max(1, len(run.recs)),
            "slo_miss_after_warmup": sum(1 for r in late_recs if not good(r))
            / max(1, len(late_recs)),
            "goodput_after_warmup": late["goodput"],
            "wrong_accept": whole["wrong_accept"],
            **{k: whole[k] for k in whole if k.endswith("_slo_miss")},
            **run.notes,
        }
    print(
        f"\nfeatures scenario: {FEATURE_LOAD}× load for {ev['end']:.0f} s, half the tasks hard "
        "(small is mostly wrong on them); learning included. SLO miss: every task not "
        "answered right in time (shed included); miss S/I/B: per class among served tasks; "
        "start↑: share of routings the bandit started above the cheapest tier; <floor: "
        "tasks a backend below the class floor was let serve (evidence or trial)"
    )
    print(
        f"{'policy':<12}{'goodput':>9}{'$/good':>10}{'SLO miss':>9}"
        f"{'miss S/I/B':>17}{'wrong-acc':>10}{'start↑':>8}{'<floor':>8}"
    )
    for p in names:
        x = summary[p]
        print(
            f"{p:<12}{x['goodput']:>9.1f}{x['cost_per_good_usd']:>10.6f}{x['slo_miss']:>9.3f}"
            f"{x['safety_slo_miss']:>7.3f}/{x['interactive_slo_miss']:.3f}/"
            f"{x['batch_slo_miss']:.3f}{x['wrong_accept']:>10.3f}"
            f"{x.get('learned_start_share', 0.0):>8.2f}{x.get('below_floor_share', 0.0):>8.2f}"
        )
    a, lr, rl = summary["atp"], summary["learning"], summary["routellm"]
    ratios = {
        "learning_vs_atp_cost_per_good": lr["cost_per_good_usd"]
        / max(1e-12, a["cost_per_good_usd"]),
        "learning_vs_atp_goodput": lr["goodput"] / max(1e-9, a["goodput"]),
        "learning_vs_atp_slo_miss": lr["slo_miss"] / max(1e-9, a["slo_miss"]),
        "routellm_vs_atp_cost_per_good": rl["cost_per_good_usd"]
        / max(1e-12, a["cost_per_good_usd"]),
        "routellm_vs_atp_goodput": rl["goodput"] / max(1e-9, a["goodput"]),
    }
    print("features ratios:", ", ".join(f"{k} = {v:.3f}" for k, v in ratios.items()))
    goals = {
        "learning_cost_per_good_le_75pct_of_atp": ratios["learning_vs_atp_cost_per_good"] <= 0.75,
        "learning_goodput_ge_atp": ratios["learning_vs_atp_goodput"] >= 0.99,
        "learning_slo_miss_le_atp": lr["slo_miss"] <= a["slo_miss"] + 0.005,
    }
    return {"summary": summary, "ratios": ratios, "goals": goals}


def _cost_window(run: Run, seg: tuple[float, float, float]) -> float:
    # Cost attributable to tasks that arrived in the window, by their answer's backend
    # price: approximated by the run's average cost per task times tasks, divided by
    # good answers in the window (the 0.5× step has no overload for any policy).
    a, b, _ = seg
    recs = [r for r in run.recs if a <= r.t < b]
    n_all = len(run.recs)
    share = len(recs) / max(1, n_all)
    return run.usd * share / max(1, sum(good(r) for r in recs))


def _clean(obj: object) -> object:
    if isinstance(obj, float):
        return round(obj, 6) if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    return obj


def _plot(
    png: Path,
    loads: list[float],
    per_load: dict[str, dict[float, dict[str, float]]],
    policies: list[str],
    runs: dict[str, Run],
    ev: dict[str, float],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    for p in policies:
        ax[0].plot(loads, [per_load[p][ld]["goodput"] for ld in loads], marker="o", label=p)
        ax[1].plot(
            loads,
            [min(per_load[p][ld]["interactive_p99_ms"], 10_000) for ld in loads],
            marker="o",
            label=p,
        )
    ax[0].set(xlabel="offered load (× capacity)", ylabel="goodput (good answers/s)")
    ax[1].axhline(DEADLINE[Qos.INTERACTIVE] * 1000, color="k", ls="--", lw=0.8)
    ax[1].set(
        xlabel="offered load (× capacity)", ylabel="INTERACTIVE p99 (ms, capped 10 s)", yscale="log"
    )
    t = [x for x, _ in runs["atp"].limits]
    ax[2].plot(t, [y for _, y in runs["atp"].limits], label="ATP planner limit")
    ax[2].axvspan(ev["brownout"], ev["brownout_end"], alpha=0.2, label="brown-out")
    ax[2].axvspan(ev["burst"], ev["burst_end"], alpha=0.2, color="r", label="4× burst")
    ax[2].set(xlabel="simulated time (s)", ylabel="concurrency limit")
    for a in ax:
        a.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
