"""Bundles from policies exported the way other stacks export them (rsl_rl / Isaac Lab:
`torch.onnx.export` of an actor MLP, input "obs", output "actions"; LeRobot-style dotted
names), built from the CLI, verified, then actually run by the runtime's session."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeflux.cli import root
from runtime.bundle import generate_signing_key, verify_bundle
from runtime.trust import TrustStore

torch = pytest.importorskip("torch")


def _export_actor(path: Path, obs: int, act: int, in_name: str, out_name: str) -> None:
    torch.manual_seed(0)
    actor = torch.nn.Sequential(
        torch.nn.Linear(obs, 64), torch.nn.ELU(), torch.nn.Linear(64, act)
    ).eval()
    # The TorchScript exporter at a fixed batch of 1, as rsl_rl's exporter does.
    torch.onnx.export(
        actor,
        (torch.zeros(1, obs),),
        str(path),
        input_names=[in_name],
        output_names=[out_name],
        opset_version=17,
        dynamo=False,
    )


@pytest.mark.parametrize(
    ("in_name", "out_name"),
    [("obs", "actions"), ("observation.state", "action")],
    ids=["rsl_rl", "lerobot-names"],
)
def test_exported_actor_becomes_a_verified_runnable_bundle(
    tmp_path: Path, in_name: str, out_name: str
) -> None:
    onnx_path = tmp_path / "actor.onnx"
    _export_actor(onnx_path, 48, 12, in_name, out_name)
    generate_signing_key(tmp_path / "k.pem", tmp_path / "k.pub")
    bdir = tmp_path / "anymal"
    runner = CliRunner()
    for args in (
        ["create", "--onnx", onnx_path, "--name", "anymal-c", "--version", "0.3.0",
         "--out", bdir, "--obs-low", "-100", "--obs-high", "100", "--action-low", "-1",
         "--action-high", "1", "--rate-hz", "50", "--deadline-ms", "4"],
        ["sign", bdir, "--key", tmp_path / "k.pem"],
    ):  # fmt: skip
        result = runner.invoke(root, ["bundle", *map(str, args)])
        assert result.exit_code == 0, result.output
    manifest = json.loads((bdir / "edgeflux.json").read_text())
    assert manifest["io"]["inputs"] == [{"name": in_name, "shape": [1, 48], "dtype": "float32"}]
    assert manifest["compatibility"]["opset"] == 17

    trust = TrustStore(tmp_path / "trust")
    trust.add("models", (tmp_path / "k.pub").read_bytes())
    verified = verify_bundle(bdir, trust)

    from runtime.session import PolicySession

    session = PolicySession(verified.path / "policy.onnx")
    action = session.run(np.zeros((1, 48), np.float32))
    assert np.asarray(action).shape == (1, 12)
