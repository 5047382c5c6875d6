"""Environment seed ranges: training and evaluation never share a seed, by construction.

- `TRAINING`: every environment seed training draws (DAgger rounds, world-model
  episodes), recorded in the bundle's provenance;
- `DISTILL_EVALUATION`: the pipeline's and ``distill eval``'s own evaluation;
- `ATTESTATION`: parity campaigns (evaluation and calibration seeds).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ATTESTATION", "DISTILL_EVALUATION", "TRAINING", "draw_training", "evaluation_seeds"]

TRAINING = range(0, 1_000_000_000)
DISTILL_EVALUATION = range(1_000_000_000, 2_000_000_000)
ATTESTATION = range(2_000_000_000, 2**31 - 1)


def draw_training(rng: np.random.Generator, n: int) -> list[int]:
    """`n` environment seeds for training, drawn from `TRAINING`."""
    return [int(s) for s in rng.integers(TRAINING.start, TRAINING.stop, size=n)]


def evaluation_seeds(seed: int, n: int) -> list[int]:
    """`n` consecutive distill evaluation seeds for run `seed`, inside `DISTILL_EVALUATION`."""
    start = DISTILL_EVALUATION.start + 1000 * seed
    if seed < 0 or start + n > DISTILL_EVALUATION.stop:
        raise ValueError(
            f"seed {seed} with {n} episodes leaves the evaluation seed range "
            f"[{DISTILL_EVALUATION.start}, {DISTILL_EVALUATION.stop})"
        )
    return list(range(start, start + n))
