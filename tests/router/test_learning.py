"""The learning router: a contextual bandit over verifier outcomes chooses where a chain
starts and lets a backend below a class's floor serve where it is good enough."""

from __future__ import annotations

from cloud.router import Qos, RouterConfig, Scope, Task
from cloud.router.learning import LearnedStart
from cloud.router.simulation import SimBackendSpec
from cloud.router.state import BackendState
from tests.router._fixtures import Sim, spec


def _task(qos: Qos = Qos.INTERACTIVE, work: float = 1.0) -> Task:
    return Task("t", "plan", qos, 10.0, Scope("acme"), work)


def _states(small_usd: float, mid_usd: float) -> list[BackendState]:
    cfg = RouterConfig()
    return [
        BackendState(spec("small", 0, per_call=small_usd, quality=0.9), cfg, 0.0),
        BackendState(spec("mid", 1, per_call=mid_usd, quality=0.9), cfg, 0.0),
    ]


def test_a_backend_below_the_floor_serves_only_on_supported_evidence() -> None:
    sel = LearnedStart(min_samples=30, trial=0.0)
    task = _task()
    assert not sel.clears_floor(task, "small", 0.7)  # no evidence, no trial
    for _ in range(29):
        sel.record(task, "small", True)
    assert not sel.clears_floor(task, "small", 0.7)  # 29 < min_samples
    sel.record(task, "small", True)
    assert sel.clears_floor(task, "small", 0.7)  # 30/30: Wilson lower bound 0.89
    worse = LearnedStart(min_samples=30, trial=0.0)
    for i in range(60):
        worse.record(task, "small", i % 4 != 0)  # 75 % accepted: lower bound 0.63 < 0.7
    assert not worse.clears_floor(task, "small", 0.7)
    # Another context (a bigger task) has its own evidence; SAFETY never clears.
    assert not sel.clears_floor(_task(work=8.0), "small", 0.7)
    assert not sel.clears_floor(_task(Qos.SAFETY), "small", 0.7)
    tries = LearnedStart(trial=0.2, seed=3)
    n = sum(tries.clears_floor(task, "small", 0.7) for _ in range(2000))
    assert 300 < n < 500  # about a fifth of the tasks try it while evidence is short


def test_the_chain_starts_higher_only_when_the_cheap_tier_is_worse_even_optimistically() -> None:
    task = _task()
    states = _states(small_usd=0.001, mid_usd=0.0015)
    sel = LearnedStart(min_samples=30, explore=0.0)
    assert sel.order(task, states)[0].spec.name == "small"  # prior: small suffices
    for _ in range(29):
        sel.record(task, "small", False)
    assert sel.order(task, states)[0].spec.name == "small"  # not yet supported
    sel.record(task, "small", False)
    first = sel.order(task, states)
    assert [s.spec.name for s in first] == ["mid"] and sel.promoted == 1
    # When the cheap tier costs little next to the next one, trying it first stays
    # cheaper per accepted answer even at a low rate: no promotion.
    cheap = _states(small_usd=0.0001, mid_usd=0.01)
    sel2 = LearnedStart(min_samples=30, explore=0.0)
    for i in range(60):
        sel2.record(task, "small", i % 3 == 0)
    assert sel2.order(task, cheap)[0].spec.name == "small"


def _sims(declared_small: float) -> list[SimBackendSpec]:
    small = spec("small", 0, quality=declared_small, per_call=0.0004, latency=0.02)
    mid = spec("mid", 1, quality=0.95, per_call=0.002, latency=0.05)
    return [
        SimBackendSpec(small, 8, 0.02, {"plan": 0.97}, jitter_sigma=0.05),
        SimBackendSpec(mid, 8, 0.05, {"plan": 0.99}, jitter_sigma=0.05),
    ]


def test_the_learning_router_finds_that_a_cheap_backend_suffices_and_costs_less() -> None:
    """Small declares 0.6 for plan (below INTERACTIVE's 0.7 floor) but is right 97 % of
    the time: today's router never asks it; the learning router learns it suffices."""
    spent = {}
    for learning in (False, True):
        sim = Sim(_sims(0.6), seed=4, selector=LearnedStart(seed=4) if learning else None)
        sim.poisson(40.0, until=20.0)
        sim.loop.run_until(25.0)
        used = sim.ledger.usage("acme", 0.0)
        assert used is not None
        ok = [r for r in sim.results if r.outcome.value == "ok"]
        assert len(ok) >= 0.95 * len(sim.results)
        small_share = sum(r.backend == "small" for r in ok) / len(ok)
        spent[learning] = used.used_usd / len(ok)
        if learning:
            assert small_share > 0.7
        else:
            assert small_share == 0.0
    assert spent[True] < 0.5 * spent[False]
