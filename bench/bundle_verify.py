"""Bundle verification vs. a bare sha256 of the same bytes, and its peak memory.

Usage::

    .venv/bin/python bench/bundle_verify.py                # 100 MB policy, 7 repeats
    .venv/bin/python bench/bundle_verify.py --size-mb 20 --repeats 3

What it builds: a *real* ONNX policy (MatMul + Tanh, loadable by onnxruntime)
carrying one extra, unused float32 initializer of zeros that pads `policy.onnx`
to the requested size, packaged with `create_bundle` and signed with
`sign_bundle` (ECDSA P-256) in a temporary directory.

What it measures, in this one process, with the page cache warm for both:

* baseline: `hashlib.file_digest(f, "sha256")` over `policy.onnx`;
* ours: `verify_bundle(...)` with a trust store, a device profile and an
  anti-rollback store, i.e. every verification step (signature over PAE,
  statement parse, file-set walk, streamed digests of every file, manifest
  schema, the streaming ONNX checks, compatibility, rollback).

Runs alternate baseline/ours and the minimum of each is reported (least disturbed
by other processes). Peak memory is `tracemalloc`'s peak during one verification
at two sizes (size and size/10): it should not grow with the file.
The target: ratio <= 1.25 and size-independent peak memory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.antirollback import AntiRollbackStore
from runtime.bundle import (
    DeviceProfile,
    create_bundle,
    generate_signing_key,
    sign_bundle,
    verify_bundle,
)
from runtime.manifest import BundleManifest
from runtime.trust import TrustStore


def make_padded_policy(path: Path, size_bytes: int) -> None:
    """A real 3->2 policy plus an unused zero initializer of ~size_bytes."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((3, 2), 0.5, np.float32), "W")
    pad = numpy_helper.from_array(np.zeros(max(size_bytes // 4, 1), np.float32), "pad")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["obs", "W"], ["h"]),
            helper.make_node("Tanh", ["h"], ["action"]),
        ],
        "policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", 2])],
        initializer=[w, pad],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    del model, pad
    path.write_bytes(data)


def manifest() -> BundleManifest:
    return BundleManifest.model_validate(
        {
            "schema": "edgeflux.bundle/v1",
            "name": "bench",
            "version": "1.0.0",
            "sequence": 1,
            "io": {
                "inputs": [{"name": "obs", "shape": [-1, 3]}],
                "outputs": [{"name": "action", "shape": [-1, 2]}],
                "obs_low": [-1, -1, -1],
                "obs_high": [1, 1, 1],
                "action_low": [-1, -1],
                "action_high": [1, 1],
            },
            "control": {"rate_hz": 50, "deadline_ms": 5},
        }
    )


def build(work: Path, size_bytes: int, tag: str) -> tuple[Path, TrustStore]:
    src = work / f"src-{tag}.onnx"
    make_padded_policy(src, size_bytes)
    bdir = create_bundle(src, manifest(), work / f"bundle-{tag}")
    src.unlink()
    keys = work / "keys"
    if not (keys / "k.pem").exists():
        generate_signing_key(keys / "k.pem", keys / "k.pub")
    sign_bundle(bdir, keys / "k.pem")
    trust = TrustStore(work / "trust")
    trust.add("models", (keys / "k.pub").read_bytes())
    return bdir, trust


_RSS_CHILD = """
import sys
from runtime.bundle import DeviceProfile, verify_bundle
from runtime.trust import TrustStore

def hwm():
    # VmHWM belongs to this exec'd image; ru_maxrss would carry the parent's peak over execve.
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))

before = hwm()
verify_bundle(sys.argv[1], TrustStore(sys.argv[2]), device=DeviceProfile(
    runtime_version="0.1.0", execution_providers=["CPUExecutionProvider"],
    hardware_tags=[], max_opset=21))
print(before, hwm())
"""


def child_rss_kib(bdir: Path, trust: TrustStore) -> tuple[int, int]:
    """(peak RSS after imports, after one verification) of a fresh interpreter, KiB (Linux)."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(bdir), str(trust.directory)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


def bare_hash(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=100.0)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    size = int(args.size_mb * 1_000_000)
    device = DeviceProfile(
        runtime_version="0.1.0",
        execution_providers=["CPUExecutionProvider"],
        hardware_tags=[],
        max_opset=21,
    )
    with tempfile.TemporaryDirectory(prefix="bench-bundle-") as tmp:
        work = Path(tmp)
        big, trust = build(work, size, "big")
        small, _ = build(work, size // 10, "small")
        counters = AntiRollbackStore(work / "antirollback.json")
        policy = big / "policy.onnx"
        file_size = policy.stat().st_size

        def ours(bdir: Path) -> str:
            return verify_bundle(bdir, trust, counters=counters, device=device).policy_sha256

        assert ours(big) == bare_hash(policy), "verification and bare hash disagree"
        base_t, ours_t = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            bare_hash(policy)
            t1 = time.perf_counter()
            ours(big)
            t2 = time.perf_counter()
            base_t.append(t1 - t0)
            ours_t.append(t2 - t1)

        peaks = {}
        for label, bdir in (("small", small), ("big", big)):
            tracemalloc.start()
            ours(bdir)
            peaks[label] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        small_size = (small / "policy.onnx").stat().st_size
        rss = {label: child_rss_kib(b, trust) for label, b in (("small", small), ("big", big))}

    base, mine = min(base_t), min(ours_t)
    ratio = mine / base
    mem_ratio = peaks["big"] / max(peaks["small"], 1)
    rows = [
        ("bare hashlib.sha256 (file_digest)", base, file_size / base / 1e6),
        ("verify_bundle (all checks)", mine, file_size / mine / 1e6),
    ]
    print(f"policy.onnx: {file_size / 1e6:.1f} MB real ONNX model padded with a zero initializer")
    print(f"repeats: {args.repeats} (min reported); load average: {os.getloadavg()[0]:.2f}")
    print(f"{'what':<36} {'time ms':>10} {'MB/s':>10}")
    for name, t, rate in rows:
        print(f"{name:<36} {t * 1e3:>10.1f} {rate:>10.0f}")
    print(f"ratio verify / bare hash: {ratio:.3f}  (target <= 1.25)")
    print(
        f"peak traced memory during verify: {peaks['small'] / 1024:.0f} KiB at "
        f"{small_size / 1e6:.1f} MB, {peaks['big'] / 1024:.0f} KiB at {file_size / 1e6:.1f} MB "
        f"(ratio {mem_ratio:.2f}; size ratio {file_size / small_size:.1f})"
    )
    print(
        "peak RSS of a fresh process (after imports -> after verify): "
        f"{rss['small'][0] / 1024:.1f} -> {rss['small'][1] / 1024:.1f} MiB at "
        f"{small_size / 1e6:.1f} MB, {rss['big'][0] / 1024:.1f} -> {rss['big'][1] / 1024:.1f} MiB "
        f"at {file_size / 1e6:.1f} MB"
    )
    print(
        json.dumps(
            {
                "bench": "bundle_verify",
                "policy_bytes": file_size,
                "repeats": args.repeats,
                "bare_sha256_s": round(base, 6),
                "verify_s": round(mine, 6),
                "ratio": round(ratio, 4),
                "target_ratio": 1.25,
                "peak_bytes_small": peaks["small"],
                "peak_bytes_big": peaks["big"],
                "peak_ratio": round(mem_ratio, 3),
                "small_policy_bytes": small_size,
                "child_maxrss_kib_small": rss["small"][1],
                "child_maxrss_kib_big": rss["big"][1],
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
