"""The bring-your-own-model walk-through runs as written: a PyTorch policy exported by
the user becomes a bundle (from the documented spec template), is signed, verified and
run by the runtime on a simulated robot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bring_your_own_model_walk_through(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHON": sys.executable,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    done = subprocess.run(
        ["bash", str(REPO / "examples" / "bring_your_own_model.sh"), str(tmp_path / "byom")],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "Traceback" not in out
    parity = re.search(r"max \|onnx - torch\| = ([0-9.e+-]+)", out)
    assert parity and float(parity.group(1)) < 1e-4, out
    assert re.search(r"^OK pendulum 1\.0\.0 \(sequence 1\) signed by", done.stdout, re.M), out
    assert "running pendulum@1.0.0 from slot a" in out
    ticks = re.search(r"stopped after (\d+) ticks", out)
    assert ticks and int(ticks.group(1)) >= 50, out  # 5 s at 20 Hz
    bundle = tmp_path / "byom" / "bundles" / "pendulum-1.0.0"
    assert sorted(p.name for p in bundle.iterdir()) == ["edgeflux.json", "model.sig", "policy.onnx"]
