"""bench/rollouts.py at a small size: its per-wave table, its summary and its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_rollout_bench_runs_four_waves_with_a_soak_and_prints_its_json() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/rollouts.py", "--robots", "40", "--soak", "0.5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "baseline: no gates, full scans" in out and "ours: attestation + 0.5 s soak" in out
    r = json.loads(out.strip().splitlines()[-1])
    assert r["bench"] == "rollouts" and r["robots"] == 40 and r["waves"] == 4, r
    assert len(r["decision_ms_per_wave"]) == 3 and len(r["wave_gaps_s"]) == 3, r
    assert r["decision_ms_p99"] >= r["decision_ms_p50"] > 0, r
    # every wave after the first waited out the soak before its first hint
    assert min(r["wave_gaps_s"]) >= 0.5 and r["wave_gap_s"] == max(r["wave_gaps_s"]), r
    assert r["baseline_wave_gap_s"] < 0.5 and r["incremental_wave_gap_s"] < 0.5, r
    assert r["cpu_us_per_robot"] > 0 and r["baseline_cpu_us_per_robot"] > 0, r
