"""The reference arm is the bundle's own teacher, found by digest, or another bundle."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from cloud.attest import campaign
from cloud.attest.report import render_text
from distill.envs import env_spec
from distill.mppi import MPPIConfig
from distill.teachers import WorldModelTeacher
from distill.wm_store import save_pretrained
from distill.world_model import PRESETS, TDMPC2Model, save_checkpoint
from runtime.kernel import settings_digest
from runtime.manifest import BundleManifest
from tests.attest.conftest import energy_pendulum_policy, pendulum_manifest

TINY = """
[campaign]
name = "tiny"
workers = 1
chunk = 4
min_pairs = 2
parity_inputs = 16

[[task]]
name = "nominal"
episodes = 2
calibration_episodes = 2
"""
MPPI = MPPIConfig(horizon=2, num_samples=16, iterations=1, num_elites=4, num_pi_trajs=2)


def _with_provenance(**fields: object) -> BundleManifest:
    data = pendulum_manifest().model_dump(mode="json", by_alias=True)
    data["provenance"] = {"env_id": "Pendulum-v1", "seeds": [1], **fields}
    return BundleManifest.model_validate(data)


def _world_model_bundle(
    tmp_path: Path, make_bundle, keep: Path | None, saved_dir: bool = False
) -> tuple[Path, str]:
    import torch

    torch.manual_seed(0)
    model = TDMPC2Model(3, 1, PRESETS["cpu-small"])
    digest = model.digest()
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        if saved_dir:
            save_pretrained(model, keep / "world_model", "Pendulum-v1")
        else:
            save_checkpoint(model, keep / "world_model.pt", "Pendulum-v1")
    teacher = WorldModelTeacher(model, env_spec("Pendulum-v1"), MPPI, seed=0)
    m = _with_provenance(
        teacher_kind="world-model",
        teacher_digest=teacher.digest(),
        world_model_digest=digest,
        teacher_mppi=asdict(MPPI),
        teacher_seed=0,
    )
    return make_bundle(manifest=m), teacher.digest()


@pytest.mark.parametrize("saved_dir", [False, True], ids=["pt-file", "saved-model-dir"])
def test_a_world_model_distilled_bundle_is_compared_with_that_world_model_teacher(
    tmp_path: Path, keys, make_bundle, saved_dir: bool
) -> None:
    bundle, teacher_digest = _world_model_bundle(
        tmp_path, make_bundle, tmp_path / "ckpt", saved_dir
    )
    spec = campaign.parse_campaign(TINY)
    spec = spec.model_copy(update={"teacher_search": [str(tmp_path / "ckpt")]})
    result = campaign.run_campaign(
        bundle, spec, workdir=tmp_path / "run", trust_dir=keys.trust_dir, key=keys.attest
    )
    teacher = result.statement["predicate"]["teacher"]
    assert teacher["kind"] == "world-model" and teacher["source"] == "bundle provenance"
    assert teacher["digests"] == {"nominal": teacher_digest}
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["margins"]["nominal"]["teacher_digest"] == teacher_digest


def test_a_teacher_that_cannot_be_reproduced_is_refused_before_anything_runs(
    tmp_path: Path, keys, make_bundle
) -> None:
    spec = campaign.parse_campaign(TINY)
    missing, _ = _world_model_bundle(tmp_path, make_bundle, keep=None)
    with pytest.raises(campaign.CampaignError, match="is not among the checkpoints"):
        campaign.run_campaign(
            missing, spec, workdir=tmp_path / "a", trust_dir=keys.trust_dir, key=keys.attest
        )
    unnamed = make_bundle(manifest=_with_provenance())
    with pytest.raises(campaign.CampaignError, match="names no teacher"):
        campaign.run_campaign(
            unnamed, spec, workdir=tmp_path / "b", trust_dir=keys.trust_dir, key=keys.attest
        )
    other = make_bundle(manifest=_with_provenance(teacher_kind="oracle", teacher_digest="sha256:0"))
    with pytest.raises(campaign.CampaignError, match="distilled from teacher sha256:0"):
        campaign.run_campaign(
            other, spec, workdir=tmp_path / "c", trust_dir=keys.trust_dir, key=keys.attest
        )
    assert not any((tmp_path / d).exists() for d in "abc")


AGAINST = TINY.replace("episodes = 2\n", "episodes = 12\n").replace(
    "min_pairs = 2", "min_pairs = 12"
)


def test_against_another_bundle_runs_both_arms_through_the_kernel(
    tmp_path: Path, keys, make_bundle
) -> None:
    old_m = pendulum_manifest(max_action_delta=1.5)
    old = make_bundle(energy_pendulum_policy(tmp_path / "old.onnx", kp=10.3), manifest=old_m)
    new = make_bundle(energy_pendulum_policy(tmp_path / "new.onnx"))
    spec = campaign.parse_campaign(AGAINST)
    result = campaign.run_campaign(
        new, spec, workdir=tmp_path / "run", trust_dir=keys.trust_dir, key=keys.attest,
        against=old,
    )  # fmt: skip
    pred = result.statement["predicate"]
    assert result.verdict == "attested", render_text(result.statement)
    old_sha = campaign.verify_bundle(old, campaign.TrustStore(keys.trust_dir)).policy_sha256
    assert pred["teacher"]["kind"] == "bundle" and pred["teacher"]["policy_sha256"] == old_sha
    assert pred["teacher"]["digests"] == {"nominal": old_sha}
    assert result.statement["subject"][0]["digest"]["sha256"] == result.bundle.policy_sha256
    ref = pred["arms"]["reference"]
    assert ref["settings_digest"] == settings_digest(old_m)
    assert ref["interventions"]["nominal"].get("action_rate_limited", 0) > 0
    assert {g["name"]: g["outcome"] for g in pred["gates"]}["arms_consistent"] == "pass"


def test_attest_run_against_names_both_bundles_and_refuses_a_bad_reference(
    tmp_path: Path, keys, make_bundle
) -> None:
    from click.testing import CliRunner

    from edgeflux.cli import root

    old = make_bundle(energy_pendulum_policy(tmp_path / "old.onnx", kp=10.3))
    new = make_bundle(energy_pendulum_policy(tmp_path / "new.onnx"))
    (tmp_path / "c.toml").write_text(AGAINST)
    args = ["attest", "run", str(new), "--campaign", str(tmp_path / "c.toml"),
            "--trust", str(keys.trust_dir), "--key", str(keys.attest_path), "--json"]  # fmt: skip
    res = CliRunner().invoke(root, [*args, "--against", str(old), "--workdir", str(tmp_path / "w")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["verdict"] == "attested"
    unsigned = tmp_path / "unsigned"
    unsigned.mkdir()
    (unsigned / "policy.onnx").write_bytes((old / "policy.onnx").read_bytes())
    bad = CliRunner().invoke(
        root, [*args, "--against", str(unsigned), "--workdir", str(tmp_path / "w2")]
    )
    assert bad.exit_code != 0 and "reference bundle does not verify" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "w2").exists()
