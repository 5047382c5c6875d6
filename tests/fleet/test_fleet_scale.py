"""The fleet-scale simulator (bench/fleet_scale.py) at a small size: 200 robots with
their own certificates for 10 s through the broker-config Mosquitto into PostgreSQL,
a two-step ladder for the bare consumer, then ingest with one and three replicas; and
bench/sim_cost.py, which measures what the simulated robots themselves cost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import missing_service, mosquitto_binary

pytestmark = [pytest.mark.services, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_two_hundred_robots_lose_nothing_and_all_commit_the_fanned_out_update() -> None:
    if mosquitto_binary() is None:
        missing_service("mosquitto is not installed")
    args = ["--robots", "200", "--seconds", "10", "--procs", "2", "--connect-s", "120"]
    args += ["--ladder", "1,2", "--ingest-replicas", "1,3"]
    proc = subprocess.run(
        [sys.executable, "bench/fleet_scale.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "consumer" in out and "lag p99" in out and "ingest/postgres" in out, out
    r = json.loads(out.strip().splitlines()[-1])
    for key in ("robots", "lost", "duplicates", "ingest_msg_s", "ingest_ratio_vs_ceiling"):
        assert key in r, r
    assert r["robots"] == 200 and r["replicas"] == 3, r
    assert next(p["rate_hz"] for p in r["phases"] if p["consumer"] == "bare") == 1.0, r
    assert r["sent"] >= 200 * 10 * r["rate_hz"] * 0.9, r
    assert r["lost"] == 0 and r["duplicates"] == 0 and r["db_duplicates"] == 0, r
    assert r["fanout_robots"] == 200 and r["fanout_s"] is not None, r
    assert r["stored_committed_devices"] == 200, r  # read back from PostgreSQL
    assert r["ingest_msg_s"] > 0 and r["lag_p99_s"] < 30, r


def test_the_robots_cost_is_measured_for_both_clients_in_one_run() -> None:
    """bench/sim_cost.py: the paho robots and bench.simrobot's against one broker, each
    losing nothing, with the CPU per message of each and their ratio in the JSON line."""
    if mosquitto_binary() is None:
        missing_service("mosquitto is not installed")
    args = ["--robots", "40", "--rate", "5", "--seconds", "4", "--procs", "1"]
    proc = subprocess.run(
        [sys.executable, "bench/sim_cost.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["paho_lost"] == 0 and r["lean_lost"] == 0, r
    assert r["paho_us_per_msg"] > 0 and r["lean_us_per_msg"] > 0, r
    assert r["us_per_msg_ratio_lean_vs_paho"] == round(
        r["lean_us_per_msg"] / r["paho_us_per_msg"], 3
    ), r
    assert "us per message" in proc.stdout, proc.stdout
