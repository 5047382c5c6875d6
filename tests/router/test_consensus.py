"""Verifier-gated weighted consensus."""

from __future__ import annotations

from cloud.router.consensus import TrackRecord, Vote, decide
from cloud.router.task import Answer
from cloud.router.verifier import Verdict


def _vote(
    backend: str,
    action: tuple[float, ...],
    score: float,
    hard_ok: bool = True,
    log_odds: float = 1.0,
) -> Vote:
    return Vote(backend, Answer(action=action), Verdict(hard_ok, score), log_odds)


def test_a_confident_wrong_backend_is_outvoted_by_two_that_agree() -> None:
    votes = [
        _vote("big", (0.9, 0.9), score=1.0, log_odds=2.0),
        _vote("a", (0.1, 0.2), score=0.8, log_odds=1.5),
        _vote("b", (0.11, 0.21), score=0.8, log_odds=1.5),
    ]
    res = decide(votes, tolerance=0.05)
    assert res.winner is not None and res.winner.backend in {"a", "b"}
    assert set(res.agreeing) == {"a", "b"}


def test_answers_failing_hard_constraints_never_win() -> None:
    votes = [
        _vote("a", (5.0, 5.0), score=1.0, hard_ok=False, log_odds=3.0),
        _vote("b", (5.0, 5.0), score=1.0, hard_ok=False, log_odds=3.0),
        _vote("c", (0.1, 0.1), score=0.7),
    ]
    res = decide(votes)
    assert res.winner is None
    assert "b" not in res.agreeing and "a" not in res.agreeing


def test_a_split_vote_is_no_consensus() -> None:
    votes = [_vote("a", (0.1, 0.1), 0.8), _vote("b", (0.5, 0.5), 0.8), _vote("c", (-0.5, 0.0), 0.8)]
    res = decide(votes)
    assert res.winner is None and "no two" in res.reason
    even = [
        _vote("a", (0.1,), 0.8),
        _vote("b", (0.1,), 0.8),
        _vote("c", (0.7,), 0.8),
        _vote("d", (0.7,), 0.8),
    ]
    res = decide(even)
    assert res.winner is None and "split" in res.reason


def test_discrete_labels_cluster_by_equality() -> None:
    votes = [
        Vote("a", Answer(label="safe"), Verdict(True, 0.9), 1.0),
        Vote("b", Answer(label="safe"), Verdict(True, 0.9), 1.0),
        Vote("c", Answer(label="unsafe"), Verdict(True, 0.9), 1.0),
    ]
    res = decide(votes)
    assert res.winner is not None and res.winner.answer.label == "safe"


def test_track_record_moves_log_odds() -> None:
    tr = TrackRecord()
    base = tr.log_odds("x", "plan", 0.8)
    for _ in range(20):
        tr.record("x", "plan", good=False)
    assert tr.log_odds("x", "plan", 0.8) < 0 < base
