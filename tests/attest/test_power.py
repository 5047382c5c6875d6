"""Power on the real pipeline: Pendulum, oracle MPPI teacher, 100 paired episodes.

`distill run`'s pipeline distils and signs a student; a campaign attests it. The same
student with its actions scaled by 0.7 (a deliberately degraded copy, re-signed so
only its behaviour differs) must not be attested. Both attestations are stored in a
real control plane, and a robot requiring parity attestation fetches each over gRPC
(mTLS): it accepts the attested bundle and refuses the degraded one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from cloud.attest import campaign
from cloud.attest.service import record_from_envelope
from cloud.attest.statement import load_key, verify_envelope
from cloud.store.attestations import AttestationStore
from cloud.testing import running_plane
from edgeflux.cli import root
from fleet import attestation as fa
from runtime.bundle import create_bundle, sign_bundle
from runtime.manifest import load_manifest
from runtime.trust import TrustStore

# Distillation takes ~30 s on an idle 2-core machine; generous under a shared one.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CAMPAIGN = """
[campaign]
name = "power"
workers = 1
chunk = 100
parity_inputs = 256

[[task]]
name = "nominal"
episodes = 100
"""


def _degrade(bundle: Path, out: Path, key: Path, scale: float) -> Path:
    model = onnx.load(bundle / "policy.onnx")
    name = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{name}_raw" if o == name else o for o in node.output]
    model.graph.initializer.append(
        numpy_helper.from_array(np.array(scale, dtype=np.float32), "degrade_scale")
    )
    model.graph.node.append(helper.make_node("Mul", [f"{name}_raw", "degrade_scale"], [name]))
    onnx.save(model, out.with_suffix(".onnx"))
    bdir = create_bundle(out.with_suffix(".onnx"), load_manifest(bundle), out)
    sign_bundle(bdir, key)
    return bdir


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    from distill.pipeline import DistillConfig, run_pipeline

    tmp = tmp_path_factory.mktemp("power")
    with running_plane(tmp / "plane") as plane:
        home = plane.home
        sign = home.key_path("model-signing", private=True)
        cfg = DistillConfig(out_dir=tmp / "distill", sign_key=sign, eval_episodes=10)
        result = run_pipeline(cfg)
        yield {
            "tmp": tmp,
            "bundle": result.bundle_dir,
            "sign": sign,
            "key": load_key(home.key_path("attestation", private=True)),
            "trust": home.trust,
            "plane": plane,
        }


def _run(d, bundle: Path, name: str) -> campaign.CampaignResult:
    return campaign.run_campaign(
        bundle,
        campaign.parse_campaign(CAMPAIGN),
        workdir=d["tmp"] / name,
        trust_dir=d["trust"],
        key=d["key"],
    )


def _robot_decision(plane, result: campaign.CampaignResult) -> fa.ActivationDecision:
    """Store the attestation in a real plane; a robot requiring attestation decides."""
    raw = result.attestation_path.read_bytes()
    trusted = TrustStore(plane.home.trust).public_keys("attestation")
    AttestationStore(plane.store.engine).put(record_from_envelope(raw, trusted))
    with plane.channel(plane.device(f"robot-{result.bundle.policy_sha256[:8]}")) as ch:
        return fa.check_activation(
            fa.AttestationPolicy(require_parity_attestation=True),
            policy_sha256=result.bundle.policy_sha256,
            root_digest=result.bundle.root_digest,
            fetch=fa.grpc_fetcher(ch),
            trusted_keys=trusted,
        )


def test_correctly_distilled_student_is_attested(distilled) -> None:
    # Through the CLI a user types: `edgeflux attest run BUNDLE --campaign C --home PLANE`
    # signs with the plane's attestation key and stores the result for the plane to serve.
    plane = distilled["plane"]
    (distilled["tmp"] / "campaign.toml").write_text(CAMPAIGN)
    res = CliRunner().invoke(
        root,
        ["attest", "run", str(distilled["bundle"]),
         "--campaign", str(distilled["tmp"] / "campaign.toml"),
         "--home", str(plane.home.root), "--workdir", str(distilled["tmp"] / "good"),
         "--out", str(distilled["tmp"] / "good.att.json"), "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    task = summary["tasks"][0]
    assert summary["verdict"] == "attested", task
    assert summary["stored_in_control_plane"] and task["n_pairs"] == 100
    raw = (distilled["tmp"] / "good.att.json").read_bytes()
    keys = TrustStore(distilled["trust"]).public_keys("attestation")
    checked = verify_envelope(
        raw, keys, policy_sha256=summary["policy_sha256"], root_digest=summary["root_digest"]
    )
    assert checked.verdict == "attested"
    # The robot fetches what the plane serves (nothing stored by the test itself).
    with plane.channel(plane.device("robot-power-good")) as ch:
        decision = fa.check_activation(
            fa.AttestationPolicy(require_parity_attestation=True),
            policy_sha256=summary["policy_sha256"],
            root_digest=summary["root_digest"],
            fetch=fa.grpc_fetcher(ch),
            trusted_keys=keys,
        )
    assert (decision.allowed, decision.reason) == (True, "attested"), decision.message


def test_student_with_actions_scaled_by_0_7_is_not_attested(distilled) -> None:
    degraded = _degrade(distilled["bundle"], distilled["tmp"] / "degraded", distilled["sign"], 0.7)
    result = _run(distilled, degraded, "degraded")
    task = result.statement["predicate"]["tasks"][0]
    assert result.verdict != "attested", (task["mean_diff"], task["ci"], task["margin"])
    assert task["mean_diff"] < 0
    assert all(g["outcome"] == "pass" for g in result.statement["predicate"]["gates"])
    decision = _robot_decision(distilled["plane"], result)
    assert (decision.allowed, decision.reason) == (False, "verdict"), decision.message
