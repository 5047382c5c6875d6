"""A parity campaign on the local process pool and on a Ray cluster: wall time and identity.

Usage::

    .venv/bin/python bench/campaign_executors.py                     # 40 pairs, chunk 10
    .venv/bin/python bench/campaign_executors.py --episodes 100 --nodes 2 --cpus 1

One campaign (Pendulum, the bundle's oracle MPPI teacher against a small linear
stand-in student, as in `bench/parity_campaign.py`) runs twice with the real runner:

* baseline: `--executor local`, `--workers` spawn processes on this machine;
* ours: `--executor ray://...`, a Ray cluster started here (`ray start`: a head and
  `--nodes - 1` worker nodes, `--cpus` CPUs each, on loopback), one unit per task.

Printed: the cluster's start time, both wall times and their ratio, the load average,
and whether every unit's result file is byte-identical between the two runs. On one
machine the cluster can only add overhead (object store, client server, task
scheduling); the number to read is that overhead, since the point of the executor is
the CPUs of other machines. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _bundle(tmp: Path) -> tuple[Path, Path, object]:
    from cloud.attest.statement import generate_key
    from runtime.bundle import create_bundle, generate_signing_key, sign_bundle
    from runtime.trust import TrustStore
    from tests.attest.conftest import linear_pendulum_policy, pendulum_manifest

    generate_signing_key(tmp / "sign.pem", tmp / "sign.pub")
    trust = TrustStore(tmp / "trust")
    trust.add("models", (tmp / "sign.pub").read_bytes())
    bdir = create_bundle(linear_pendulum_policy(tmp / "p.onnx"), pendulum_manifest(), tmp / "b")
    sign_bundle(bdir, tmp / "sign.pem")
    return bdir, tmp / "trust", generate_key(tmp / "attest.key")


def _units(workdir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((workdir / "units").glob("*.json"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--chunk", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2, help="local pool processes")
    ap.add_argument("--nodes", type=int, default=2, help="Ray nodes (head included)")
    ap.add_argument("--cpus", type=int, default=1, help="CPUs per Ray node")
    args = ap.parse_args()

    from cloud.attest import campaign
    from cloud.attest.executors import LocalExecutor, RayExecutor
    from tests.servers import run_ray_cluster

    toml = (
        f'[campaign]\nname = "executors"\nworkers = {args.workers}\nchunk = {args.chunk}\n'
        f'parity_inputs = 64\n\n[[task]]\nname = "nominal"\nepisodes = {args.episodes}\n'
        f"calibration_episodes = {args.chunk}\n"
    )
    spec = campaign.parse_campaign(toml)
    with tempfile.TemporaryDirectory(prefix="bench-exec-") as d:
        tmp = Path(d)
        bundle, trust, key = _bundle(tmp)
        kw = {"trust_dir": trust, "key": key}
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        with LocalExecutor(args.workers) as ex:
            campaign.run_campaign(bundle, spec, workdir=tmp / "local", executor=ex, **kw)
        local_s = time.perf_counter() - t0
        with run_ray_cluster(nodes=args.nodes, cpus_per_node=args.cpus) as cluster:
            t0 = time.perf_counter()
            with RayExecutor(cluster.host, cluster.port) as ex:
                result = campaign.run_campaign(bundle, spec, workdir=tmp / "ray", executor=ex, **kw)
            ray_s = time.perf_counter() - t0
            start_s = cluster.start_s
        identical = _units(tmp / "local") == _units(tmp / "ray")
        n_units = len(_units(tmp / "ray"))
    load_after = os.getloadavg()
    out = {
        "pairs": args.episodes,
        "units": n_units,
        "local_workers": args.workers,
        "ray_nodes": args.nodes,
        "ray_cpus_per_node": args.cpus,
        "ray_cluster_start_s": round(start_s, 2),
        "local_s": round(local_s, 2),
        "ray_s": round(ray_s, 2),
        "ray_over_local": round(ray_s / local_s, 3),
        "identical_units": identical,
        "verdict": result.verdict,
        "load_1m_before": round(load_before[0], 2),
        "load_1m_after": round(load_after[0], 2),
        "cpus_here": os.cpu_count(),
    }
    print(f"{'':28}{'seconds':>10}")
    print(f"{'ray cluster start':28}{start_s:>10.1f}   ({args.nodes} nodes × {args.cpus} CPU)")
    print(f"{'campaign, local pool':28}{local_s:>10.1f}   ({args.workers} processes)")
    print(f"{'campaign, ray':28}{ray_s:>10.1f}   (ray / local = {ray_s / local_s:.2f})")
    print(f"units byte-identical: {identical} ({n_units} units, {args.episodes} pairs); "
          f"load {load_before[0]:.2f} → {load_after[0]:.2f} on {os.cpu_count()} CPUs")  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
