"""Distribution of large bundles: verification memory and time against a bare hash.

Usage::

    .venv/bin/python bench/distribution.py                  # 100 MB and 1 GB bundles
    .venv/bin/python bench/distribution.py --small-mb 8 --large-mb 64

What it builds: bundles whose real ONNX policy (obs + Gather rows of each weight
tensor, loadable by onnxruntime) keeps its weights as ONNX external data in two
files next to `policy.onnx`. The weight files are sparse (only their first row is
written), so a 1 GB bundle costs no disk; every byte is still read and hashed.

What it measures, in this one process, page cache warm for both:

* baseline: `hashlib.file_digest(f, "sha256")` over every file of the bundle;
* ours: `verify_bundle(...)` (signature, file set, streamed digests of every file,
  manifest, the ONNX checks including every external-data range).

Peak memory is `tracemalloc`'s peak during one verification of each size: it must
not grow with the bundle (`verify_peak_bytes_100mb` vs `verify_peak_bytes_1gb`).
The last line is JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.bundle import generate_signing_key, sign_bundle, verify_bundle
from runtime.manifest import BundleManifest
from runtime.trust import TrustStore


def _external(name: str, rows: int, location: str) -> object:
    from onnx import TensorProto

    t = TensorProto()
    t.name = name
    t.data_type = TensorProto.FLOAT
    t.dims.extend([rows, 4])
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(rows * 16))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def build_sparse_bundle(bdir: Path, total_bytes: int, files: int = 2) -> None:
    """An unsigned bundle of `files` sparse weight files summing to ~total_bytes."""
    import numpy as np
    from onnx import TensorProto, helper

    bdir.mkdir(parents=True)
    inits, nodes, last = [], [], "obs"
    for i in range(files):
        rows = total_bytes // files // 16
        with open(bdir / f"w{i}.bin", "wb") as fh:
            fh.write(np.full(4, 0.5, np.float32).tobytes())
            fh.truncate(rows * 16)
        inits.append(_external(f"W{i}", rows, f"w{i}.bin"))
        nodes.append(helper.make_node("Gather", [f"W{i}", "idx"], [f"r{i}"], axis=0))
        out = "action" if i == files - 1 else f"s{i}"
        nodes.append(helper.make_node("Add", [last, f"r{i}"], [out]))
        last = out
    graph = helper.make_graph(
        nodes,
        "bench",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", 4])],
        initializer=[*inits, helper.make_tensor("idx", TensorProto.INT64, [], [0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (bdir / "policy.onnx").write_bytes(model.SerializeToString())
    manifest = BundleManifest.model_validate(
        {
            "schema": "edgeflux.bundle/v1",
            "name": "bench",
            "version": "1.0.0",
            "sequence": 1,
            "io": {
                "inputs": [{"name": "obs", "shape": [-1, 4]}],
                "outputs": [{"name": "action", "shape": [-1, 4]}],
                "obs_low": [-1] * 4,
                "obs_high": [1] * 4,
                "action_low": [-1] * 4,
                "action_high": [1] * 4,
            },
            "control": {"rate_hz": 50, "deadline_ms": 5},
        }
    )
    (bdir / "edgeflux.json").write_text(manifest.to_json())


def bare_hash(bdir: Path) -> None:
    for p in sorted(bdir.iterdir()):
        if p.name != "model.sig":
            with p.open("rb") as fh:
                hashlib.file_digest(fh, "sha256")


def measure(work: Path, total_bytes: int, trust: TrustStore, key: Path) -> dict[str, float]:
    bdir = work / f"bundle-{total_bytes}"
    build_sparse_bundle(bdir, total_bytes)
    sign_bundle(bdir, key)
    t0 = time.perf_counter()
    bare_hash(bdir)
    t_bare = time.perf_counter() - t0
    tracemalloc.start()
    t0 = time.perf_counter()
    verify_bundle(bdir, trust)
    t_ours = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"bytes": total_bytes, "bare_s": t_bare, "verify_s": t_ours, "peak": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small-mb", type=int, default=100)
    ap.add_argument("--large-mb", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeflux-dist-") as tmp:
        work = Path(tmp)
        generate_signing_key(work / "k.pem", work / "k.pub")
        trust = TrustStore(work / "trust")
        trust.add("models", (work / "k.pub").read_bytes())
        small = measure(work, args.small_mb * 1_000_000, trust, work / "k.pem")
        large = measure(work, args.large_mb * 1_000_000, trust, work / "k.pem")
    print(f"{'bundle':>10} {'bare sha256 s':>14} {'verify s':>10} {'ratio':>6} {'peak KiB':>9}")
    for r in (small, large):
        print(
            f"{r['bytes'] / 1e6:>8.0f}MB {r['bare_s']:>14.3f} {r['verify_s']:>10.3f} "
            f"{r['verify_s'] / r['bare_s']:>6.2f} {r['peak'] / 1024:>9.0f}"
        )
    print(f"peak memory ratio large/small: {large['peak'] / small['peak']:.2f}")
    print(
        json.dumps(
            {
                "bench": "distribution",
                "verify_peak_bytes_100mb": int(small["peak"]),
                "verify_peak_bytes_1gb": int(large["peak"]),
                "small_bytes": int(small["bytes"]),
                "large_bytes": int(large["bytes"]),
                "verify_time_ratio_large": large["verify_s"] / large["bare_s"],
            }
        )
    )


if __name__ == "__main__":
    main()
