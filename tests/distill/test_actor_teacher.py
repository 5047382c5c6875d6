"""The world model's own actor as the teacher: what it computes, when the pipeline
picks it, and that a parity campaign rebuilds exactly that teacher from the bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cloud.attest.reference import make_reference, resolve_reference
from distill.dagger import DaggerConfig
from distill.dreamer import DREAMER_FAMILY
from distill.envs import env_spec
from distill.errors import UnknownEnvError
from distill.mppi import MPPIConfig
from distill.pipeline import DistillConfig, run_pipeline
from distill.teachers import ActorTeacher, WorldModelTeacher, has_policy_prior
from distill.wm_registry import load_family
from distill.wm_store import save_pretrained
from distill.world_model import TDMPC2Model, WorldModelConfig
from runtime.bundle import generate_signing_key
from runtime.manifest import load_manifest
from tests.distill.test_wm_families import _install_plugin

SPEC = env_spec("Pendulum-v1")
SMALL = WorldModelConfig(latent_dim=16, mlp_dim=32, enc_dim=32, batch_size=16, activation="silu")
TINY = {"eval_episodes": 2, "dagger": DaggerConfig(rounds=2, envs_per_round=2, epochs=2)}


def _model(seed: int = 0) -> TDMPC2Model:
    torch.manual_seed(seed)
    return TDMPC2Model(3, 1, SMALL).eval()


def test_the_actor_teacher_acts_with_the_mode_of_the_policy_prior() -> None:
    m = _model()
    obs = np.random.default_rng(0).uniform(SPEC.obs_low, SPEC.obs_high, (64, 3)).astype("f4")
    actor = ActorTeacher(m, SPEC)
    with torch.no_grad():
        mu, _ = m._pi(m.encode(torch.as_tensor(obs))).chunk(2, dim=-1)
    expected = (2.0 * torch.tanh(mu)).numpy()  # Pendulum's torque bounds are ±2
    got = actor.act(obs)
    assert got.shape == (64, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(actor.act(obs), got)  # deterministic: no sampling
    assert np.all(np.abs(got) <= 2.0)
    # Its identity names the weights and the acting rule, distinct from the planner's.
    planner = WorldModelTeacher(m, SPEC, MPPIConfig(num_samples=32, iterations=1,
                                                    num_elites=4, num_pi_trajs=4))  # fmt: skip
    assert actor.digest() != planner.digest()
    assert ActorTeacher(_model(seed=1), SPEC).digest() != actor.digest()
    assert ActorTeacher(_model(), SPEC).digest() == actor.digest()


def test_the_dreamer_actor_acts_with_its_gaussian_mean() -> None:
    torch.manual_seed(0)
    cfg = {**DREAMER_FAMILY.default_config("cpu-small"), "discount": 0.975}
    m = DREAMER_FAMILY.build(3, 1, cfg).eval()
    obs = np.zeros((4, 3), dtype=np.float32)
    obs[:, 0] = 1.0
    got = ActorTeacher(m, SPEC).act(obs)
    with torch.no_grad():
        loc = m._dist(m.encode(torch.as_tensor(obs))).loc
    np.testing.assert_allclose(got, 2.0 * loc.numpy(), rtol=1e-6, atol=1e-6)


def test_a_model_without_a_policy_prior_is_refused_as_actor_and_auto_plans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_plugin(tmp_path, monkeypatch)
    torch.manual_seed(0)
    plain = load_family("mlp-dynamics").build(3, 1, {"hidden": 8})
    assert not has_policy_prior(plain, SPEC) and has_policy_prior(_model(), SPEC)
    with pytest.raises(UnknownEnvError, match="no policy prior to act with; use the MPPI"):
        ActorTeacher(plain, SPEC)
    save_pretrained(plain, tmp_path / "wm", "Pendulum-v1")
    mppi = MPPIConfig(horizon=2, num_samples=16, iterations=1, num_elites=4, num_pi_trajs=0)
    result = run_pipeline(DistillConfig(out_dir=tmp_path / "o", teacher="world-model",
                                        checkpoint=tmp_path / "wm", teacher_mppi=mppi,
                                        **TINY))  # type: ignore[arg-type]  # fmt: skip
    assert result.summary["teacher_policy"] == "mppi"
    prov = load_manifest(result.bundle_dir).provenance.model_extra or {}
    assert prov["teacher_policy"] == "mppi" and prov["teacher_mppi"]["num_samples"] == 16


def test_a_campaign_rebuilds_the_actor_teacher_a_bundle_was_distilled_from(
    tmp_path: Path,
) -> None:
    m = _model()
    digest = save_pretrained(m, tmp_path / "models" / "wm", "Pendulum-v1")
    generate_signing_key(tmp_path / "sign.pem", tmp_path / "sign.pub")
    result = run_pipeline(DistillConfig(out_dir=tmp_path / "o", teacher="world-model",
                                        checkpoint=tmp_path / "models" / "wm",
                                        sign_key=tmp_path / "sign.pem",
                                        **TINY))  # type: ignore[arg-type]  # fmt: skip
    s = result.summary
    assert s["teacher_policy"] == "actor" and s["world_model_digest"] == digest
    assert s["teacher_digest"] == ActorTeacher(m, SPEC).digest()
    assert set(s["cpu_seconds"]) == set(s["seconds"])  # per-stage CPU beside wall time
    manifest = load_manifest(result.bundle_dir)
    prov = manifest.provenance.model_extra or {}
    assert prov["teacher_policy"] == "actor" and "teacher_mppi" not in prov
    recipe = resolve_reference("bundle", manifest, result.bundle_dir, [tmp_path / "models"])
    assert recipe["kind"] == "world-model" and recipe["policy"] == "actor"
    assert recipe["teacher_digest"] == s["teacher_digest"]
    rebuilt = make_reference(recipe, "Pendulum-v1", {})
    obs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, -3.0]], dtype=np.float32)
    np.testing.assert_array_equal(rebuilt.act(obs), ActorTeacher(m, SPEC).act(obs))
