"""`cloud publish` signs each bundle's chunk list into TUF and reports the reuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import numpy_helper

from cloud.cli import cloud
from cloud.tuf_repo import TufRepository
from runtime.bundle import create_bundle, sign_bundle
from tests.bundle.conftest import make_manifest, make_policy


def _bundle(tmp: Path, key: Path, version: str, sequence: int) -> Path:
    # 4 MB of random weights (the same in every version): several chunks.
    policy = make_policy(tmp / f"p-{version}.onnx")
    model = onnx.load(policy)
    pad = np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(pad, "pad"))
    onnx.save(model, policy)
    bdir = create_bundle(
        policy, make_manifest(version=version, sequence=sequence), tmp / f"b-{version}"
    )
    sign_bundle(bdir, key)
    return bdir


def test_publish_lists_chunks_and_prints_the_dedup_against_the_previous_version(
    tmp_path: Path,
) -> None:
    home = tmp_path / "plane"
    assert CliRunner().invoke(cloud, ["init", str(home)]).exit_code == 0
    key = home / "keys" / "model-signing.key"
    first = CliRunner().invoke(
        cloud, ["publish", str(_bundle(tmp_path, key, "1.0.0", 1)), "--home", str(home), "--json"]
    )
    assert first.exit_code == 0, first.output
    assert "dedup" not in json.loads(first.stdout)  # nothing earlier to compare with
    second = CliRunner().invoke(
        cloud, ["publish", str(_bundle(tmp_path, key, "1.1.0", 2)), "--home", str(home)]
    )
    assert second.exit_code == 0, second.output
    assert "dedup against 1.0.0:" in second.output
    target = TufRepository(home / "tuf").targets()["bundles/pendulum-1.1.0.efb"]
    chunks = target.unrecognized_fields["custom"]["chunks"]
    assert len(chunks) >= 2 and sum(n for _, n in chunks) == target.length
    again = CliRunner().invoke(
        cloud, ["publish", str(_bundle(tmp_path, key, "1.2.0", 3)), "--home", str(home), "--json"]
    )
    dedup = json.loads(again.stdout)["dedup"]
    # Only the archive's head (manifest, signature, tar headers) differs between versions.
    assert dedup["against"] == "1.1.0" and dedup["ratio"] > 0.5
    assert dedup["fetch_bytes"] < target.length / 2
