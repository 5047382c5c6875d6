"""The campaign runner on real Pendulum episodes, a real signed bundle and real sessions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloud.attest import campaign
from cloud.attest.statement import verify_envelope
from runtime.trust import TrustStore

SMALL = """
[campaign]
name = "small"
workers = 1
chunk = 30
min_pairs = 30
parity_inputs = 64

[[task]]
name = "nominal"
episodes = 30
calibration_episodes = 8

[[task]]
name = "heavy"
variant = { m = 1.2 }
episodes = 30
calibration_episodes = 8
"""


def test_campaign_definition_errors_name_the_field() -> None:
    with pytest.raises(campaign.CampaignError, match=r"tasks.0.episodes"):
        campaign.parse_campaign('[campaign]\nname="x"\n[[task]]\nname="a"\nepisodes=1\n')
    with pytest.raises(campaign.CampaignError, match="low < 0 < high"):
        campaign.parse_campaign('[campaign]\nname="x"\n[[task]]\nname="a"\nmargin=[1, 2]\n')
    with pytest.raises(campaign.CampaignError, match="unique"):
        campaign.parse_campaign('[campaign]\nname="x"\n[[task]]\nname="a"\n[[task]]\nname="a"\n')
    with pytest.raises(campaign.CampaignError, match="epsiodes"):
        campaign.parse_campaign('[campaign]\nname="x"\n[[task]]\nname="a"\nepsiodes=3\n')
    with pytest.raises(campaign.CampaignError, match="not valid TOML"):
        campaign.parse_campaign("[campaign\n")


def test_campaign_refuses_an_unsigned_bundle_and_runs_nothing(tmp_path: Path, keys) -> None:
    from runtime.bundle import create_bundle
    from tests.attest.conftest import linear_pendulum_policy, pendulum_manifest

    src = linear_pendulum_policy(tmp_path / "p.onnx")
    bdir = create_bundle(src, pendulum_manifest(), tmp_path / "unsigned")
    with pytest.raises(campaign.CampaignError, match="does not verify"):
        campaign.run_campaign(
            bdir,
            campaign.parse_campaign(SMALL),
            workdir=tmp_path / "run",
            trust_dir=keys.trust_dir,
            key=keys.attest,
        )
    assert not (tmp_path / "run").exists()


def test_small_campaign_signs_a_verifiable_attestation_and_resumes(
    tmp_path: Path, keys, make_bundle
) -> None:
    bundle = make_bundle()
    spec = campaign.parse_campaign(SMALL)
    seen: list[tuple[int, int, str]] = []
    result = campaign.run_campaign(
        bundle,
        spec,
        workdir=tmp_path / "run",
        trust_dir=keys.trust_dir,
        key=keys.attest,
        progress=lambda d, t, s: seen.append((d, t, s)),
    )
    # A linear controller cannot swing the pendulum up like the MPPI teacher.
    assert result.verdict == "not_attested"
    pred = result.statement["predicate"]
    assert [t["name"] for t in pred["tasks"]] == ["nominal", "heavy"]
    nominal = pred["tasks"][0]
    assert nominal["n_pairs"] == 30 and nominal["outcome"] in {"not_equivalent", "underpowered"}
    assert nominal["mean_diff"] < 0 and "p_holm" in nominal
    assert nominal["margin"]["low"] < 0 < nominal["margin"]["high"]
    gates = {(g["name"], g["task"]): g["outcome"] for g in pred["gates"]}
    assert gates[("student_via_runtime", None)] == "pass"
    assert gates[("pairs_complete", "heavy")] == "pass"
    assert gates[("teacher_beats_random", "nominal")] == "pass"
    assert pred["execution"]["providers"] == ["CPUExecutionProvider"]
    parity = {r["provider"]: r for r in pred["numeric_parity"]["providers"]}
    assert parity["CPUExecutionProvider"]["ran_on"] == "CPUExecutionProvider"
    assert all(r["max_abs"] < 1e-5 for r in parity.values() if "max_abs" in r)
    assert seen[-1][0] == seen[-1][1] and seen[-1][2] == "numeric parity"

    raw = result.attestation_path.read_bytes()
    trusted = TrustStore(keys.trust_dir).public_keys("attestation")
    checked = verify_envelope(
        raw,
        trusted,
        policy_sha256=result.bundle.policy_sha256,
        root_digest=result.bundle.root_digest,
        require_attested=False,
    )
    assert checked.verdict == "not_attested"

    # Resume: every unit is on disk, so nothing reruns and the margins stay as fixed.
    state_before = json.loads((tmp_path / "run" / "state.json").read_text())
    units = sorted((tmp_path / "run" / "units").glob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in units]
    again = campaign.run_campaign(
        bundle, spec, workdir=tmp_path / "run", trust_dir=keys.trust_dir, key=keys.attest
    )
    assert [p.stat().st_mtime_ns for p in units] == stamps
    assert json.loads((tmp_path / "run" / "state.json").read_text()) == state_before
    assert again.statement["predicate"]["tasks"][0]["p_tost"] == nominal["p_tost"]

    # A run killed mid-way: one evaluation unit missing. Only that unit is recomputed.
    lost = tmp_path / "run" / "units" / "heavy.0000.json"
    lost.unlink()
    kept = [p for p in units if p != lost]
    kept_stamps = [p.stat().st_mtime_ns for p in kept]
    resumed = campaign.run_campaign(
        bundle, spec, workdir=tmp_path / "run", trust_dir=keys.trust_dir, key=keys.attest
    )
    assert lost.exists() and [p.stat().st_mtime_ns for p in kept] == kept_stamps
    assert resumed.statement["predicate"]["tasks"][1]["p_tost"] == pred["tasks"][1]["p_tost"]


def test_workdir_of_another_bundle_is_refused(tmp_path: Path, keys, make_bundle) -> None:
    spec = campaign.parse_campaign(
        # Two one-episode units over two spawn workers: the parallel path.
        '[campaign]\nname = "tiny"\nworkers = 2\nchunk = 1\n[[task]]\nname = "a"\n'
        "episodes = 2\ncalibration_episodes = 2\n"
    )
    first, second = make_bundle(), make_bundle(gain=0.5)
    run = tmp_path / "run"
    done = campaign.run_campaign(
        first, spec, workdir=run, trust_dir=keys.trust_dir, key=keys.attest
    )
    assert done.statement["predicate"]["tasks"][0]["n_pairs"] == 2
    assert sorted(p.name for p in (run / "units").glob("*.json")) == [
        "a.0000.json",
        "a.0001.json",
        "a.cal.json",
    ]
    with pytest.raises(campaign.CampaignError, match="different campaign or bundle"):
        campaign.run_campaign(second, spec, workdir=run, trust_dir=keys.trust_dir, key=keys.attest)


def test_training_seeds_come_from_every_provenance_seed_field() -> None:
    from runtime.manifest import Provenance

    prov = Provenance.model_validate(
        {"seeds": [0], "dagger_seeds": [2_000_000_005, 7], "env_seeds": [True, "x", 9]}
    )
    assert campaign.training_seeds(prov) == frozenset({0, 7, 9, 2_000_000_005})


def test_campaign_identity_ignores_workers_but_not_what_is_measured() -> None:
    base = campaign.parse_campaign(SMALL)
    assert base.model_copy(update={"workers": 8}).digest() == base.digest()
    assert base.model_copy(update={"chunk": 7}).digest() != base.digest()
    assert campaign.parse_campaign(SMALL.replace("m = 1.2", "m = 1.3")).digest() != base.digest()


ENVELOPE_CAMPAIGN = """
[campaign]
name = "envelope"
workers = 1
chunk = 12
min_pairs = 12
parity_inputs = 32
teacher = "tests.attest.conftest:energy_teacher"

[[task]]
name = "nominal"
episodes = 12
calibration_episodes = 6
"""


def test_a_student_is_judged_on_the_actions_its_envelope_lets_through(
    tmp_path: Path, keys, make_bundle
) -> None:
    """The same graph attests without a rate limit and is refused with one that wrecks it."""
    from cloud.attest.report import render_text
    from runtime.kernel import settings_digest
    from tests.attest.conftest import energy_pendulum_policy, pendulum_manifest

    graph = energy_pendulum_policy(tmp_path / "energy.onnx")
    spec = campaign.parse_campaign(ENVELOPE_CAMPAIGN)
    results = {}
    for label, m in (
        ("free", pendulum_manifest()),
        ("limited", pendulum_manifest(max_action_delta=0.05)),
    ):
        bundle = make_bundle(graph, manifest=m)
        results[label] = campaign.run_campaign(
            bundle, spec, workdir=tmp_path / label, trust_dir=keys.trust_dir, key=keys.attest
        )
        pred = results[label].statement["predicate"]
        assert pred["arms"]["student"]["settings_digest"] == settings_digest(m)
        gates = {g["name"]: g["outcome"] for g in pred["gates"]}
        assert gates["arms_consistent"] == "pass"
    free = results["free"].statement["predicate"]
    limited = results["limited"].statement["predicate"]
    assert results["free"].verdict == "attested", render_text(results["free"].statement)
    assert free["arms"]["student"]["interventions"]["nominal"] == {}

    # Refused: with 12 pairs the interval is wider than the band, so the statistics call
    # it underpowered rather than not equivalent; either way it is not attested.
    assert results["limited"].verdict in {"not_attested", "underpowered"}
    assert limited["tasks"][0]["outcome"] in {"not_equivalent", "underpowered"}
    assert limited["tasks"][0]["ci"]["high"] < limited["tasks"][0]["margin"]["low"]
    assert limited["tasks"][0]["student_mean"] < free["tasks"][0]["student_mean"] - 300
    limited_counts = limited["arms"]["student"]["interventions"]["nominal"]
    assert limited_counts["action_rate_limited"] > 12 * 100
    report = render_text(results["limited"].statement)
    assert "action_rate_limited" in report
    assert "the safety envelope changed 100% of the student's actions" in report


def test_a_graph_with_a_fixed_batch_of_one_runs_a_whole_campaign(
    tmp_path: Path, keys, make_bundle
) -> None:
    from runtime.manifest import BundleManifest
    from tests.attest.conftest import linear_pendulum_policy, pendulum_manifest

    graph = linear_pendulum_policy(tmp_path / "fixed.onnx", batch=1)
    data = pendulum_manifest().model_dump(mode="json", by_alias=True)
    data["io"]["inputs"][0]["shape"] = [1, 3]
    data["io"]["outputs"][0]["shape"] = [1, 1]
    spec = campaign.parse_campaign(ENVELOPE_CAMPAIGN.replace("episodes = 12", "episodes = 4")
                                   .replace("min_pairs = 12", "min_pairs = 4"))  # fmt: skip
    result = campaign.run_campaign(
        make_bundle(graph, manifest=BundleManifest.model_validate(data)), spec,
        workdir=tmp_path / "run", trust_dir=keys.trust_dir,
        key=keys.attest,
    )  # fmt: skip
    pred = result.statement["predicate"]
    assert pred["tasks"][0]["n_pairs"] == 4
    (cpu,) = [r for r in pred["numeric_parity"]["providers"] if r["provider"].startswith("CPU")]
    assert cpu["max_abs"] < 1e-5 and cpu["n_inputs"] == 32
