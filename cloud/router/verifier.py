"""Verifiers: accept an answer, or send the task up a tier.

A verifier returns hard pass/fail (finite values, the action dimension, the action
bounds of the robot's safety envelope) and a soft score in [0, 1]. The router accepts
an answer that passes with score ≥ `accept_score`; a score in the grey zone
[`grey_low`, `accept_score`) on a non-SAFETY task triggers consensus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from cloud.router.task import Answer, Task

__all__ = ["ConstraintVerifier", "Verdict", "Verifier"]


@dataclass(frozen=True)
class Verdict:
    hard_ok: bool
    score: float
    reason: str = ""


class Verifier(Protocol):
    def verify(self, task: Task, answer: Answer) -> Verdict: ...


class ConstraintVerifier:
    """Checks hard constraints; the soft score penalises actions pinned to the envelope.

    A policy or planner that saturates the bounds on every axis is usually extrapolating,
    so the score is 1 minus the fraction of components within `edge_fraction` of a bound.
    """

    def __init__(self, edge_fraction: float = 0.02) -> None:
        self.edge_fraction = edge_fraction

    def verify(self, task: Task, answer: Answer) -> Verdict:
        if not answer.finite():
            return Verdict(False, 0.0, "non-finite action")
        c = task.constraints
        if c is None or c.action_dim == 0:
            return Verdict(True, 1.0 if answer.action or answer.label or answer.result else 0.5)
        if len(answer.action) != c.action_dim:
            return Verdict(
                False, 0.0, f"action has {len(answer.action)} components, expected {c.action_dim}"
            )
        edge = 0
        for i, (a, lo, hi) in enumerate(
            zip(answer.action, c.action_low, c.action_high, strict=True)
        ):
            if a < lo or a > hi:
                return Verdict(False, 0.0, f"action[{i}] = {a:.4g} outside [{lo:.4g}, {hi:.4g}]")
            span = hi - lo
            if span > 0 and min(a - lo, hi - a) <= self.edge_fraction * span:
                edge += 1
        score = 1.0 - edge / c.action_dim
        return Verdict(True, score if math.isfinite(score) else 0.0)
