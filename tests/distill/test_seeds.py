"""Training and evaluation seeds come from disjoint ranges, by construction."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cloud.attest import campaign
from cloud.attest.spec import campaign_seeds
from distill import seeds
from distill.dagger import DaggerConfig, run_dagger
from distill.envs import env_spec
from distill.student import StudentConfig
from distill.teachers import OracleMPPITeacher


def test_the_ranges_are_disjoint_and_fit_a_32_bit_seed() -> None:
    ranges = [seeds.TRAINING, seeds.DISTILL_EVALUATION, seeds.ATTESTATION]
    for a, b in itertools.pairwise(ranges):
        assert a.stop <= b.start
    assert seeds.ATTESTATION.stop <= 2**31 - 1


def test_training_draws_and_evaluation_seeds_stay_in_their_ranges() -> None:
    drawn = seeds.draw_training(np.random.default_rng(0), 10_000)
    assert all(s in seeds.TRAINING for s in drawn)
    assert all(s in seeds.DISTILL_EVALUATION for s in seeds.evaluation_seeds(999, 1000))
    with pytest.raises(ValueError, match="leaves the evaluation seed range"):
        seeds.evaluation_seeds(1_000_000, 10)


def test_dagger_records_seeds_from_the_training_range_only() -> None:
    spec = env_spec("Pendulum-v1")
    tiny = DaggerConfig(rounds=2, envs_per_round=2, epochs=1)
    result = run_dagger(spec, OracleMPPITeacher(), tiny, StudentConfig(), 3)
    assert len(result.env_seeds) == 4 and all(s in seeds.TRAINING for s in result.env_seeds)


def test_campaign_seeds_sit_in_the_attestation_range_and_training_starts_are_refused() -> None:
    spec = campaign.parse_campaign(
        '[campaign]\nname = "c"\n[[task]]\nname = "a"\n[[task]]\nname = "b"\nepisodes = 500\n'
    )
    for i in range(2):
        evaluation, calibration = campaign_seeds(spec, i)
        assert all(s in seeds.ATTESTATION for s in evaluation + calibration)
    with pytest.raises(campaign.CampaignError, match="lies in the training seed range"):
        campaign.parse_campaign('[campaign]\nname = "c"\n[[task]]\nname = "a"\nseed_start = 5\n')
