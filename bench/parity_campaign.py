"""Parity campaign wall time and GetAttestation latency, against in-process baselines.

Usage::

    .venv/bin/python bench/parity_campaign.py                      # 3 tasks × 100 pairs
    .venv/bin/python bench/parity_campaign.py --episodes 30 --calls 300
    .venv/bin/python bench/parity_campaign.py --bundle ./out/pendulum-v1-0.1.0 --trust ./trust

Part 1 — campaign (target: 3-task × 100-episode Pendulum campaign ≤ 180 s on
2 cores). Both runs are the real runner (`cloud.attest.campaign.run_campaign`):

* baseline: one episode per work unit in one process (no lock-step batching, so the
  MPPI teacher plans for a single environment per call), on a subset of episodes,
  reported as seconds per pair;
* ours: the full campaign with the declared chunking (50 episodes per lock-step
  batch) over `--workers` spawn processes.

The student defaults to a small linear stand-in bundle (the teacher arm dominates the
cost, the student is ~1,500× cheaper); pass `--bundle` for a distilled one.

Part 2 — `GetAttestation` (target p99 < 5 ms on loopback): a real control plane
(grpc.aio, mTLS, SQLite) and a device client making sequential calls; baseline is
the store lookup alone (`AttestationStore.for_policy`, no cache, no RPC) in-process.
On a shared machine the overall p99 measures the scheduler as much as the service, so
the p99 of the least-disturbed tenth of the calls is printed beside it (both in JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np


def _stand_in_bundle(tmp: Path) -> tuple[Path, Path]:
    from runtime.bundle import create_bundle, generate_signing_key, sign_bundle
    from runtime.trust import TrustStore
    from tests.attest.conftest import linear_pendulum_policy, pendulum_manifest

    generate_signing_key(tmp / "sign.pem", tmp / "sign.pub")
    TrustStore(tmp / "trust").add("models", (tmp / "sign.pub").read_bytes())
    src = linear_pendulum_policy(tmp / "p.onnx")
    bdir = create_bundle(src, pendulum_manifest(), tmp / "bundle")
    sign_bundle(bdir, tmp / "sign.pem")
    return bdir, tmp / "trust"


def _campaign_toml(episodes: int, workers: int, chunk: int) -> str:
    tasks = [
        ("nominal", ""),
        ("heavy", "variant = { m = 1.3 }"),
        ("low-g", "variant = { g = 8.0 }"),
    ]
    body = f'[campaign]\nname = "bench"\nworkers = {workers}\nchunk = {chunk}\n'
    for name, extra in tasks:
        body += f'\n[[task]]\nname = "{name}"\nepisodes = {episodes}\n{extra}\n'
    return body


def bench_campaign(args: argparse.Namespace, tmp: Path) -> dict:
    from cloud.attest import campaign
    from cloud.attest.statement import generate_key

    if args.bundle:
        bundle, trust = Path(args.bundle), Path(args.trust)
    else:
        bundle, trust = _stand_in_bundle(tmp)
    key = generate_key(tmp / "attest.key")

    base_eps = args.baseline_episodes
    base_spec = campaign.parse_campaign(_campaign_toml(base_eps, 1, 1))
    t0 = time.perf_counter()
    campaign.run_campaign(bundle, base_spec, workdir=tmp / "base", trust_dir=trust, key=key)
    base_s = time.perf_counter() - t0

    spec = campaign.parse_campaign(_campaign_toml(args.episodes, args.workers, 50))
    t0 = time.perf_counter()
    result = campaign.run_campaign(bundle, spec, workdir=tmp / "ours", trust_dir=trust, key=key)
    ours_s = time.perf_counter() - t0
    pairs_base, pairs_ours = 3 * base_eps, 3 * args.episodes
    return {
        "baseline_s": base_s,
        "baseline_pairs": pairs_base,
        "baseline_s_per_pair": base_s / pairs_base,
        "ours_s": ours_s,
        "ours_pairs": pairs_ours,
        "ours_s_per_pair": ours_s / pairs_ours,
        "speedup_per_pair": (base_s / pairs_base) / (ours_s / pairs_ours),
        "verdict": result.verdict,
        "target_s": 180.0,
    }


def bench_get(args: argparse.Namespace, tmp: Path) -> dict:
    from cloud.attest import statement
    from cloud.attest.service import record_from_envelope
    from cloud.store.attestations import AttestationStore
    from cloud.testing import running_plane
    from protos import attestation_pb2, attestation_pb2_grpc
    from runtime.trust import TrustStore

    with running_plane(tmp / "plane") as plane:
        key = statement.load_key(plane.home.key_path("attestation", private=True))
        now = datetime.now(UTC)
        digest = "ab" * 32
        stmt = statement.build_statement(
            policy_sha256=digest,
            root_digest="cd" * 32,
            bundle_name="pendulum",
            predicate={"verdict": "attested", "tasks": [{"x": list(range(300))}]},
            issued_at=now,
            expires_at=now + timedelta(days=1),
        )
        raw = statement.envelope_bytes(statement.sign_statement(stmt, key))
        trusted = TrustStore(plane.home.trust).public_keys("attestation")
        store = AttestationStore(plane.store.engine)
        store.put(record_from_envelope(raw, trusted))

        base = []
        for _ in range(args.calls):
            t0 = time.perf_counter()
            store.for_policy(digest)
            base.append(time.perf_counter() - t0)

        device = plane.device("bench-robot")
        with plane.channel(device) as ch:
            stub = attestation_pb2_grpc.AttestationServiceStub(ch)
            req = attestation_pb2.GetAttestationRequest(subject_sha256=digest)
            for _ in range(20):  # connect, TLS handshake, warm caches
                stub.GetAttestation(req)
            rpc = []
            for _ in range(args.calls):
                t0 = time.perf_counter()
                stub.GetAttestation(req)
                rpc.append(time.perf_counter() - t0)
    b, r = np.array(base) * 1e3, np.array(rpc) * 1e3
    # The machine is shared: the p99 of the least-disturbed tenth of the run says what
    # the service costs, the overall p99 what this machine gave it.
    rounds = np.array_split(r, 10)
    best_round_p99 = float(min(np.percentile(x, 99) for x in rounds))
    return {
        "calls": args.calls,
        "envelope_bytes": len(raw),
        "store_p50_ms": float(np.percentile(b, 50)),
        "store_p99_ms": float(np.percentile(b, 99)),
        "rpc_p50_ms": float(np.percentile(r, 50)),
        "rpc_p99_ms": float(np.percentile(r, 99)),
        "rpc_best_tenth_p99_ms": best_round_p99,
        "rpc_over_store_p99": float(np.percentile(r, 99) / np.percentile(b, 99)),
        "target_p99_ms": 5.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=100, help="pairs per task (3 tasks)")
    ap.add_argument("--baseline-episodes", type=int, default=6, help="pairs per task, baseline")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--bundle", help="a signed bundle directory (default: linear stand-in)")
    ap.add_argument("--trust", help="trust store verifying --bundle")
    ap.add_argument("--skip-campaign", action="store_true")
    args = ap.parse_args()
    import os

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-parity-") as d:
        tmp = Path(d)
        get = bench_get(args, tmp)
        camp = None if args.skip_campaign else bench_campaign(args, tmp)
    print(f"machine: {os.cpu_count()} cores, load average at start {load:.1f} (shared)")
    print(f"{'measure':<44}{'baseline':>12}{'ours':>12}{'ratio':>9}")
    if camp:
        print(
            f"{'campaign s/pair (3 tasks)':<44}{camp['baseline_s_per_pair']:>12.3f}"
            f"{camp['ours_s_per_pair']:>12.3f}{camp['speedup_per_pair']:>8.1f}×"
        )
        print(
            f"{'campaign wall s':<44}{camp['baseline_s']:>12.1f}{camp['ours_s']:>12.1f}"
            f"{'':>9}  ({camp['ours_pairs']} pairs; target ≤ {camp['target_s']:.0f} s)"
        )
    print(
        f"{'GetAttestation p50 ms (store | gRPC+mTLS)':<44}{get['store_p50_ms']:>12.3f}"
        f"{get['rpc_p50_ms']:>12.3f}"
    )
    print(
        f"{'GetAttestation p99 ms (store | gRPC+mTLS)':<44}{get['store_p99_ms']:>12.3f}"
        f"{get['rpc_p99_ms']:>12.3f}{get['rpc_over_store_p99']:>8.1f}×  (target < 5 ms)"
    )
    print(
        f"{'GetAttestation p99 ms, least-disturbed tenth':<44}{'':>12}"
        f"{get['rpc_best_tenth_p99_ms']:>12.3f}"
    )
    print(json.dumps({"bench": "parity_campaign", "load": load, "campaign": camp, "get": get}))


if __name__ == "__main__":
    main()
