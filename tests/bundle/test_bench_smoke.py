"""The benchmark script runs and prints its table, ratio and one JSON line (tiny size)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bundle_verify_bench_prints_ratio_and_json() -> None:
    out = subprocess.run(
        [sys.executable, "bench/bundle_verify.py", "--size-mb", "2", "--repeats", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "ratio verify / bare hash" in out
    record = json.loads(out.strip().splitlines()[-1])
    assert record["bench"] == "bundle_verify"
    assert record["ratio"] > 0 and record["policy_bytes"] >= 2_000_000
    # Memory must not scale with the file: 10x the bytes, (almost) the same peak.
    assert record["peak_bytes_big"] <= 1.5 * record["peak_bytes_small"]


def test_distribution_bench_prints_size_independent_verify_memory() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "bench/distribution.py",
            *("--small-mb", "2", "--large-mb", "20", "--policy-mb", "6"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    record = json.loads(out.strip().splitlines()[-1])
    assert record["bench"] == "distribution"
    assert record["large_bytes"] == 10 * record["small_bytes"]
    assert record["verify_peak_bytes_1gb"] <= 1.2 * record["verify_peak_bytes_100mb"]
    assert 0 < record["delta_bytes_ratio"] < 1 and record["throughput_ratio"] > 0
    assert record["resume_refetch_chunks"] == 0
