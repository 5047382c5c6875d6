"""Gradient2 concurrency limit: convergence, brown-out recovery, back-off."""

from __future__ import annotations

from cloud.router.limiter import Gradient2, Gradient2Config
from cloud.router.simulation import SimBackendSpec
from tests.router._fixtures import Sim, spec

SERVERS = 8
SERVICE_S = 0.05


def _one_backend_sim(seed: int = 0) -> Sim:
    b = SimBackendSpec(
        spec("gpu", capacity=2, latency=SERVICE_S),
        servers=SERVERS,
        service_s_per_work_unit=SERVICE_S,
        accuracy={"plan": 1.0},
        jitter_sigma=0.1,
    )
    sim = Sim([b], seed=seed)
    # Twice the backend's capacity (8 / 0.05 s = 160 tasks/s), for 60 simulated seconds.
    sim.poisson(320.0, until=60.0)
    return sim


def _limits(sim: Sim, t0: float, t1: float) -> list[float]:
    st = sim.router.backends["gpu"]
    out = []
    t = t0
    while t < t1:
        t += 0.25
        sim.loop.run_until(t)
        out.append(st.limiter.limit)
    return out


def test_limit_converges_near_true_capacity_under_overload() -> None:
    sim = _one_backend_sim()
    sim.loop.run_until(5.0)
    limits = _limits(sim, 5.0, 20.0)
    mean = sum(limits) / len(limits)
    # Gradient2 with tolerance 1.5 settles where latency is ≤ 1.5× uncongested, i.e.
    # between the true concurrency (8) and about 1.5–2× it; it started at 2.
    assert SERVERS * 0.75 <= mean <= SERVERS * 2.2, limits
    ok = sum(r.outcome.value == "ok" for r in sim.results)
    assert ok / sim.loop.now >= 0.8 * SERVERS / SERVICE_S  # near the backend's throughput


def test_limit_drops_in_a_brownout_and_recovers_after_it() -> None:
    sim = _one_backend_sim(seed=3)
    sim.sims["gpu"].brownouts.append((20.0, 30.0, 3.0))
    sim.loop.run_until(19.0)
    before = _limits(sim, 19.0, 20.0)
    during = _limits(sim, 20.0, 23.0)
    sim.loop.run_until(35.0)
    after = _limits(sim, 35.0, 45.0)
    assert min(during) < min(before) / 2  # backs off when every call is 3× slower
    mean_after = sum(after) / len(after)
    assert SERVERS * 0.75 <= mean_after <= SERVERS * 2.2, after


def test_drop_backs_off_multiplicatively_and_respects_the_floor() -> None:
    lim = Gradient2(Gradient2Config(initial_limit=10.0, min_limit=1.0))
    lim.on_drop()
    assert abs(lim.limit - 9.0) < 1e-9
    for _ in range(100):
        lim.on_drop()
    assert lim.limit == 1.0


def test_limit_does_not_grow_when_it_is_not_used() -> None:
    lim = Gradient2(Gradient2Config(initial_limit=10.0))
    for i in range(200):
        lim.on_sample(0.05, 1.0, in_flight=1, now=i * 0.01)
    assert lim.limit <= 10.0
