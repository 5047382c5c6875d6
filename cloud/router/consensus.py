"""Verifier-gated weighted consensus across diverse backends.

Answers failing hard constraints are gated out. The rest are clustered (same discrete
label, or actions within `tolerance` in max-norm of the cluster's first member). Each
answer weighs `verifier score × track-record log-odds` of its backend on this task type,
where the track record is a Beta posterior seeded with the backend's predicted quality:
log((a + q·n0) / (b + (1-q)·n0)), floored at a small positive value so a newcomer still
counts a little. The winning cluster needs at least two members and more than
`majority` of the total weight; otherwise the outcome is NO_CONSENSUS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from cloud.router.task import Answer
from cloud.router.verifier import Verdict

__all__ = ["ConsensusResult", "TrackRecord", "Vote", "decide"]

MIN_WEIGHT = 0.05


@dataclass
class TrackRecord:
    """Per (backend, task type) counts of answers that were (not) on the accepted side."""

    prior_n: float = 10.0
    counts: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def log_odds(self, backend: str, task_type: str, quality: float) -> float:
        a, b = self.counts.get((backend, task_type), (0.0, 0.0))
        q = min(max(quality, 0.01), 0.99)
        return math.log((a + q * self.prior_n) / (b + (1 - q) * self.prior_n))

    def record(self, backend: str, task_type: str, good: bool) -> None:
        c = self.counts.setdefault((backend, task_type), [0.0, 0.0])
        c[0 if good else 1] += 1


@dataclass(frozen=True)
class Vote:
    backend: str
    answer: Answer
    verdict: Verdict
    log_odds: float

    @property
    def weight(self) -> float:
        return max(self.verdict.score, 0.0) * max(self.log_odds, MIN_WEIGHT)


@dataclass(frozen=True)
class ConsensusResult:
    winner: Vote | None
    agreeing: tuple[str, ...]
    weight_share: float
    reason: str


def _same(a: Answer, b: Answer, tolerance: float) -> bool:
    if a.label or b.label:
        return a.label == b.label
    if len(a.action) != len(b.action):
        return False
    return all(abs(x - y) <= tolerance for x, y in zip(a.action, b.action, strict=True))


def decide(
    votes: Sequence[Vote], tolerance: float = 0.05, majority: float = 0.5
) -> ConsensusResult:
    valid = [v for v in votes if v.verdict.hard_ok and v.answer.ok]
    gated = len(votes) - len(valid)
    clusters: list[list[Vote]] = []
    for v in valid:
        for cl in clusters:
            if _same(cl[0].answer, v.answer, tolerance):
                cl.append(v)
                break
        else:
            clusters.append([v])
    total = sum(v.weight for v in valid)
    if not clusters or total <= 0:
        return ConsensusResult(None, (), 0.0, f"no valid answers ({gated} failed hard constraints)")
    best = max(clusters, key=lambda cl: sum(v.weight for v in cl))
    share = sum(v.weight for v in best) / total
    members = tuple(v.backend for v in best)
    if len(best) < 2:
        return ConsensusResult(None, members, share, "no two backends agree")
    if share <= majority:
        return ConsensusResult(None, members, share, f"split vote (best share {share:.2f})")
    winner = max(best, key=lambda v: v.weight)
    return ConsensusResult(winner, members, share, f"{len(best)} agree, share {share:.2f}")
