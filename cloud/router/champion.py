"""Champion/challenger per task type, promoted only on a statistically supported win.

A small share of tasks is mirrored to the challenger; each mirrored pair where exactly
one side's answer is accepted by the verifier (or both are accepted with different
scores) is a win or loss for the challenger. Promotion needs at least `min_pairs`
decided pairs and a Wilson score lower bound (z = 1.96) on the win rate above 0.5
(Wilson 1927; Agresti & Coull 1998).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ChampionChallenger", "wilson_lower_bound"]


def wilson_lower_bound(wins: int, n: int, z: float = 1.96) -> float:
    if n <= 0:
        return 0.0
    p = wins / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - margin) / denom


@dataclass
class ChampionChallenger:
    task_type: str
    champion: str
    challenger: str
    mirror_share: float = 0.05
    min_pairs: int = 30
    wins: int = 0
    losses: int = 0
    promoted: bool = False

    def record(self, champion_score: float, challenger_score: float) -> bool:
        """Record one mirrored pair; return True if this pair promoted the challenger."""
        if self.promoted or champion_score == challenger_score:
            return False
        if challenger_score > champion_score:
            self.wins += 1
        else:
            self.losses += 1
        n = self.wins + self.losses
        if n >= self.min_pairs and wilson_lower_bound(self.wins, n) > 0.5:
            self.promoted = True
            self.champion, self.challenger = self.challenger, self.champion
            return True
        return False
