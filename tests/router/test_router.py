"""Router behaviour end to end on the simulated clock, including every bad-input outcome
documented in cloud/router/router.py."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.router import Answer, BackendSpec, Outcome, PriceModel, Qos, RouterConfig, Scope
from cloud.router.audit import AuditLog, verify_log
from cloud.router.champion import ChampionChallenger, wilson_lower_bound
from cloud.router.errors import RouterConfigError
from cloud.router.simulation import SimBackendSpec
from cloud.router.verifier import Verdict
from tests.router._fixtures import Sim, spec


def _b(
    name: str,
    tier: int = 0,
    accuracy: float = 1.0,
    servers: int = 4,
    service: float = 0.05,
    types: tuple[str, ...] = ("plan",),
    quality: float = 0.9,
    **kw: object,
) -> SimBackendSpec:
    return SimBackendSpec(
        spec(
            name,
            tier,
            types,
            capacity=servers,
            quality=quality,
            latency=service,
            per_call=0.001 * (10**tier),
        ),
        servers=servers,
        service_s_per_work_unit=service,
        accuracy={t: accuracy for t in types},
        jitter_sigma=0.05,
        **kw,  # type: ignore[arg-type]
    )


def test_unknown_task_type_fails_with_a_named_reason() -> None:
    sim = Sim([_b("small")])
    tid = sim.submit(task_type="juggle")
    r = sim.result(tid)
    assert (r.outcome, r.reason) == (Outcome.FAILED, "unknown_task_type")


def test_a_deadline_already_past_is_rejected_at_once() -> None:
    sim = Sim([_b("small")])
    tid = sim.submit(deadline_s=-0.1)
    r = sim.result(tid)
    assert (r.outcome, r.reason, r.retry_after_s) == (Outcome.REJECTED, "deadline_passed", 0.0)
    assert sim.ledger.open_reservations() == 0


def test_an_unreachable_deadline_is_rejected_before_any_work() -> None:
    sim = Sim([_b("small", service=0.5)])
    tid = sim.submit(deadline_s=0.1)
    assert sim.result(tid).reason == "deadline_unreachable"
    assert sim.sims["small"].calls == 0


def test_a_tenant_without_a_budget_is_told_so() -> None:
    sim = Sim([_b("small")])
    tid = sim.submit(scope=Scope("nobody"))
    r = sim.result(tid)
    assert (r.outcome, r.reason) == (Outcome.BUDGET_EXHAUSTED, "budget:no_budget")
    assert sim.sims["small"].calls == 0


def test_overload_rejects_early_when_the_wait_cannot_fit_the_deadline() -> None:
    sim = Sim([_b("small", servers=1, service=0.2)])
    sim.router.backends["small"].limiter.limit = 1.0
    first = sim.submit(deadline_s=5.0)
    second = sim.submit(deadline_s=0.3)  # 0.2 s wait + 0.2 s service > 0.3 s
    r = sim.result(second)
    assert (r.outcome, r.reason) == (Outcome.REJECTED, "overloaded")
    assert r.retry_after_s > 0
    assert sim.sims["small"].calls == 1
    sim.loop.run_until(1.0)
    assert sim.result(first).outcome is Outcome.OK


def test_a_task_whose_deadline_allows_waits_for_a_slot_in_priority_order() -> None:
    sim = Sim([_b("small", servers=1, service=0.2)])
    sim.router.backends["small"].limiter.limit = 1.0
    sim.submit(deadline_s=5.0)
    batch = sim.submit(qos=Qos.BATCH, deadline_s=5.0)
    interactive = sim.submit(deadline_s=5.0)
    assert sim.results == []  # nothing rejected: both wait
    sim.loop.run_until(2.0)
    ri, rb = sim.result(interactive), sim.result(batch)
    assert ri.outcome is Outcome.OK and rb.outcome is Outcome.OK
    assert ri.latency_s < rb.latency_s  # INTERACTIVE went before the older BATCH task


def test_a_waiting_task_is_rejected_once_it_could_no_longer_finish_in_time() -> None:
    sim = Sim([_b("small", servers=1, service=0.2)])
    sim.router.backends["small"].limiter.limit = 1.0
    sim.sims["small"].brownouts.append((0.0, 0.01, 10.0))  # the first call takes 2 s
    first = sim.submit(deadline_s=5.0)
    waiting = sim.submit(deadline_s=0.45)  # fits on the router's estimate: it waits
    assert sim.results == []
    sim.loop.run_until(1.0)
    r = sim.result(waiting)
    assert (r.outcome, r.reason) == (Outcome.REJECTED, "queue_timeout")
    assert r.latency_s == pytest.approx(0.25)  # at the latest start: deadline − service
    sim.loop.run_until(3.0)
    assert sim.result(first).outcome is Outcome.OK


def test_a_backend_that_never_answers_times_out_is_charged_its_time_and_backs_off() -> None:
    sim = Sim([_b("hung", silent=True)])
    st = sim.router.backends["hung"]
    limit0 = st.limiter.limit
    tid = sim.submit(deadline_s=0.5)
    sim.loop.run_until(1.0)
    r = sim.result(tid)
    assert (r.outcome, r.reason) == (Outcome.FAILED, "deadline_exceeded")
    assert st.limiter.limit < limit0
    assert sim.ledger.open_reservations() == 0
    usage = sim.ledger.usage("acme", 0.0)
    # Its time until the deadline is billed (here: the per-call price), never more than
    # the reservation, and nothing stays reserved.
    assert usage is not None and usage.used_usd == pytest.approx(0.001)
    assert usage.reserved_usd == 0.0


def test_negative_or_absurd_cost_reports_are_charged_at_worst_case_and_flagged() -> None:
    for factor in (-1.0, 1e6):
        log = AuditLog(Ed25519PrivateKey.generate(), every_n=1000)
        sim = Sim([_b("liar", reported_work_factor=factor)], audit=log)
        tid = sim.submit()
        sim.loop.run_until(1.0)
        r = sim.result(tid)
        assert r.outcome is Outcome.OK
        worst = sim.router.backends["liar"].spec.worst_case_usd(1.0, 2.0)
        assert r.cost_usd == pytest.approx(worst)
        assert sim.router.backends["liar"].bad_cost_reports == 1
        sim.router.flush_audit()
        assert b"bad_cost_report" in log.lines()[-1]


def test_negative_or_absurd_declared_prices_are_refused() -> None:
    with pytest.raises(RouterConfigError, match="per_call_usd"):
        BackendSpec("x", 0, frozenset({"plan"}), PriceModel(per_call_usd=-1)).validate()
    with pytest.raises(RouterConfigError, match="sanity cap"):
        BackendSpec("x", 0, frozenset({"plan"}), PriceModel(per_call_usd=1e9)).validate()
    with pytest.raises(RouterConfigError, match="per_gpu_second_usd"):
        BackendSpec(
            "x", 0, frozenset({"plan"}), PriceModel(per_gpu_second_usd=float("nan"))
        ).validate()


def test_cheapest_tier_serves_and_a_rejected_answer_escalates_one_tier_up() -> None:
    sim = Sim([_b("small", 0, accuracy=0.0), _b("large", 1, accuracy=1.0)])
    tid = sim.submit()
    sim.loop.run_until(1.0)
    r = sim.result(tid)
    assert (r.outcome, r.backend, r.escalations) == (Outcome.OK, "large", 1)
    assert sim.sims["small"].calls == 1


def test_escalation_stops_after_two_steps() -> None:
    no_grey = RouterConfig(grey_low=0.6)  # no grey-zone consensus: pure escalation
    sim = Sim([_b(f"b{i}", i, accuracy=0.0) for i in range(4)], config=no_grey)
    tid = sim.submit(deadline_s=5.0)
    sim.loop.run_until(5.0)
    r = sim.result(tid)
    assert (r.outcome, r.reason, r.escalations) == (Outcome.FAILED, "verifier_rejected", 2)
    assert sim.sims["b3"].calls == 0


def test_safety_tasks_go_to_consensus_and_a_lone_wrong_backend_is_outvoted() -> None:
    bs = [
        _b("a", 0, 1.0, types=("verify",), quality=0.95),
        _b("b", 1, 1.0, types=("verify",), quality=0.95),
        _b("c", 2, 0.0, types=("verify",), quality=0.95),
    ]
    sim = Sim(bs)
    tid = sim.submit("verify", Qos.SAFETY, deadline_s=1.0)
    sim.loop.run_until(1.0)
    r = sim.result(tid)
    assert r.outcome is Outcome.OK and r.reason == "consensus"
    assert r.answer is not None and r.answer.label == sim.truth.label[tid]
    assert all(s.calls == 1 for s in sim.sims.values())


def test_safety_split_vote_returns_no_consensus() -> None:
    bs = [
        _b("a", 0, 1.0, types=("verify",), quality=0.95),
        _b("b", 1, 0.0, types=("verify",), quality=0.95),
    ]
    sim = Sim(bs)
    tid = sim.submit("verify", Qos.SAFETY, deadline_s=1.0)
    sim.loop.run_until(1.0)
    assert sim.result(tid).outcome is Outcome.NO_CONSENSUS


def test_a_failing_backend_is_ejected_and_recovers_through_half_open_probes() -> None:
    cfg = RouterConfig()
    sim = Sim([_b("only", servers=8)], config=cfg)
    sim.sims["only"].fail_windows.append((0.0, 5.0, 1.0))
    sim.poisson(50.0, until=20.0)
    sim.loop.run_until(5.0)
    st = sim.router.backends["only"]
    assert st.health.ejections >= 1 or not st.health.available(sim.loop.now)
    rejected = [r for r in sim.results if r.reason == "no_healthy_backend"]
    assert rejected and all(r.retry_after_s > 0 for r in rejected)
    sim.loop.run_until(20.0)
    late = [r for r in sim.results[-100:]]
    assert sum(r.outcome is Outcome.OK for r in late) >= 90  # a single-backend pool recovered


def test_hedging_sends_a_slow_task_to_the_next_tier() -> None:
    sim = Sim([_b("small", 0, servers=16, service=0.02), _b("large", 1, servers=16, service=0.02)])
    sim.poisson(100.0, until=2.0)  # latency history for the p95
    sim.loop.run_until(3.0)
    sim.sims["small"].brownouts.append((3.0, 10.0, 20.0))
    tid = sim.submit(deadline_s=2.0)
    sim.loop.run_until(5.0)
    r = sim.result(tid)
    assert r.outcome is Outcome.OK and r.backend == "large"
    assert sim.router.counters.get("dispatch:hedge", 0) >= 1


def test_challenger_is_promoted_only_on_a_supported_win() -> None:
    assert wilson_lower_bound(0, 0) == 0.0
    cc = ChampionChallenger("plan", "old", "new", min_pairs=30)
    for _ in range(29):
        assert not cc.record(0.0, 0.9)
    assert cc.record(0.0, 0.9) and cc.champion == "new"
    tie = ChampionChallenger("plan", "old", "new", min_pairs=30)
    for i in range(200):
        tie.record(0.9 if i % 2 else 0.0, 0.0 if i % 2 else 0.9)
    assert not tie.promoted


def test_mirrored_traffic_promotes_a_better_challenger_and_audits_it() -> None:
    log = AuditLog(Ed25519PrivateKey.generate(), every_n=64)
    cc = ChampionChallenger("plan", "small", "new", mirror_share=0.5, min_pairs=20)
    sim = Sim(
        [_b("small", 0, accuracy=0.7, servers=16), _b("new", 0, accuracy=1.0, servers=16)],
        audit=log,
        challengers=[cc],
    )
    sim.router.preferred["plan"] = "small"
    sim.poisson(50.0, until=20.0)
    sim.loop.run_until(21.0)
    assert cc.promoted and sim.router.preferred["plan"] == "new"
    sim.router.flush_audit()
    assert any(b'"event":"promotion"' in line for line in log.lines())
    log.sign_head()
    verify_log(log.lines(), log._key.public_key())


def test_every_decision_is_audited_and_the_log_verifies() -> None:
    key = Ed25519PrivateKey.generate()
    log = AuditLog(key, every_n=16)
    sim = Sim([_b("small", 0, accuracy=0.8), _b("large", 1)], audit=log)
    sim.poisson(40.0, until=3.0)
    sim.submit(task_type="juggle")
    sim.loop.run_until(4.0)
    sim.router.flush_audit()
    log.sign_head()
    report = verify_log(log.lines(), key.public_key())
    assert report.records == len(sim.results)


class _GreyVerifier:
    """Every answer passes the hard checks but scores in the grey zone."""

    def verify(self, task: object, answer: Answer) -> Verdict:
        return Verdict(True, 0.45)


def test_a_grey_zone_score_asks_other_backends_and_accepts_their_agreement() -> None:
    bs = [_b("small", 0), _b("mid", 1), _b("large", 2)]
    sim = Sim(bs, verifier=_GreyVerifier())
    tid = sim.submit(deadline_s=2.0)
    sim.loop.run_until(2.0)
    r = sim.result(tid)
    assert (r.outcome, r.reason) == (Outcome.OK, "consensus")
    assert all(s.calls == 1 for s in sim.sims.values())
    assert sim.router.counters.get("dispatch:consensus") == 2
