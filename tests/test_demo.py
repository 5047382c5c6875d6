"""The README's first command, end to end: `edgeflux demo --exit --quick --json`.

Asserts on the machine-readable summary, as CI does: every robot committed v1.1.0,
the broken (NaN) bundle was refused on every robot which kept running v1.1.0 with its
anti-rollback counter unchanged, and the attestation fetched over gRPC verified.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.services]


@pytest.mark.timeout(2400)
def test_demo_end_to_end(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeflux.cli",
            "demo",
            "--dir",
            str(tmp_path / "demo"),
            "--exit",
            "--quick",
            "--telemetry-seconds",
            "2",
            "--json",
            str(summary_path),
        ],
        capture_output=True,
        text=True,
        timeout=2300,
    )
    assert summary_path.is_file(), proc.stdout[-5000:] + proc.stderr[-5000:]
    summary = json.loads(summary_path.read_text())
    failed = [s for s in summary["stages"] if s["status"] != "done"]
    assert not failed, (failed, proc.stdout[-5000:])
    assert proc.returncode == 0
    assert summary["ok"] is True
    assert summary["all_committed_v2"] is True
    assert set(summary["robots"]) == {"robot-1", "robot-2", "robot-3"}
    rollout = summary["rollout"]
    assert rollout["state"] == "completed"
    assert [len(w["devices"]) for w in rollout["waves"]] == [1, 2]  # staged: one robot first
    for robot, facts in summary["robots"].items():
        assert facts["v2_committed"], robot
        assert facts["broken_outcome"] in ("FAILED", "ROLLED_BACK"), (robot, facts)
        assert facts["active_after_broken"] == "1.1.0", (robot, facts)
        assert facts["counter_after_broken"] == 2, (robot, facts)
    # robot-3 requires a parity attestation: it refuses the unattested broken bundle
    # before it runs in shadow; the others catch its NaN actions in shadow.
    assert summary["robots"]["robot-3"]["broken_reason"] == "ATTESTATION_INVALID"
    assert summary["robots"]["robot-1"]["broken_reason"] == "SHADOW_NAN"
    assert summary["broken_refused_everywhere"] is True
    assert summary["attestation_verified"] is True
    assert summary["attestation"]["verdict"] == "attested"
    assert summary["bundles"]["1.1.0"]["attestation"] == "attested"
    # Every process the demo started is gone.
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True)
    assert leftover.returncode == 1, leftover.stdout


def test_sigterm_stops_every_process_the_demo_started(tmp_path: Path) -> None:
    import signal

    from tests.servers import wait_until

    workdir = tmp_path / "demo"
    log = tmp_path / "demo.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeflux.cli", "demo", "--dir", str(workdir), "--exit", "--quick"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        # the control plane is up once the admin certificate exists and `cloud up` runs
        def plane_running() -> bool:
            found = subprocess.run(
                ["pgrep", "-f", f"cloud up --home {workdir}"], capture_output=True
            )
            return found.returncode == 0

        wait_until(lambda: plane_running() or proc.poll() is not None, 120, "cloud up")
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    leftover = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True)
    assert leftover.returncode == 1, leftover.stdout
    assert "interrupted" in log.read_text()
