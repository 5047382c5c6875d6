"""Distribution of large bundles: chunked updates, resume, and verification memory.

Usage::

    .venv/bin/python bench/distribution.py                  # 100 MB policy, 1 GB bundle
    .venv/bin/python bench/distribution.py --small-mb 8 --large-mb 64 --policy-mb 8

Chunked distribution (a real gRPC server on a local socket serving a real TUF
repository through ``FetchFile``; the robot side is `fleet.tuf_client`):

* a policy of ``--policy-mb`` in ten layers, and a second version whose last layer
  was retrained (the rest identical), each created, signed and packed to an `.efb`
  and published as a TUF target listing its chunks;
* baseline: a plain download of version 1 (the same bytes, one offset stream;
  best of three runs alternating with ours);
* ours: a chunked download of version 1 into an empty chunk store, then the update
  to version 2 with version 1's chunks held; `delta_bytes_ratio` is the bytes the
  server sent for the update over the size of version 2; `throughput_ratio` is
  plain time / chunked time for version 1;
* resume: a chunked download whose link drops after half the target's bytes, then
  run again: `resume_refetch_chunks` counts chunks fetched twice (the chunk cut in
  half by the drop is not counted: its bytes were never stored).

MQTT path (``--mqtt-mb``; skipped, with a note, where Mosquitto is not installed): a
real control plane (``cloud.testing.running_plane``) with its MQTT file responder on a
local Mosquitto serves one chunked target of that size; a robot downloads it into an
empty chunk store over gRPC (``FetchFile``, 256 KiB pieces) and over MQTT
(``fleet.mqtt_fetch``, 256 KiB blocks, four requests in flight), best of two runs
each, alternating; `mqtt_throughput_ratio` is gRPC time / MQTT time.

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
import contextlib
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


def layered_policy(path: Path, total_bytes: int, retrained_seed: int) -> None:
    """obs -> ten square MatMul layers -> action; the last layer's weights use
    `retrained_seed`, the others a fixed seed (so two versions share nine layers)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    n = max(int((total_bytes / 10 / 4) ** 0.5), 4)
    rng = np.random.default_rng(0)
    inits, nodes, last = [], [], "obs"
    for i in range(10):
        if i == 9:
            rng = np.random.default_rng(retrained_seed)
        w = (rng.standard_normal((n, n)) / n).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"W{i}"))
        out = "action" if i == 9 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [last, f"W{i}"], [out]))
        last = out
    graph = helper.make_graph(
        nodes,
        "layers",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", n])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


def layered_efb(work: Path, total_bytes: int, version: str, seed: int, key: Path) -> Path:
    from runtime.bundle import create_bundle, pack_bundle

    src = work / f"src-{version}.onnx"
    layered_policy(src, total_bytes, seed)
    n = max(int((total_bytes / 10 / 4) ** 0.5), 4)
    manifest = BundleManifest.model_validate(
        {
            "schema": "edgeflux.bundle/v1",
            "name": "layers",
            "version": version,
            "sequence": int(version.split(".")[1]) + 1,
            "io": {
                "inputs": [{"name": "obs", "shape": [-1, n]}],
                "outputs": [{"name": "action", "shape": [-1, n]}],
                "obs_low": [-1] * n,
                "obs_high": [1] * n,
                "action_low": [-1] * n,
                "action_high": [1] * n,
            },
            "control": {"rate_hz": 50, "deadline_ms": 5},
        }
    )
    bdir = create_bundle(src, manifest, work / f"layers-{version}")
    src.unlink()
    sign_bundle(bdir, key)
    return pack_bundle(bdir, work / f"layers-{version}.efb")


class _Interrupted(Exception):
    pass


def distribution(work: Path, policy_bytes: int, key: Path) -> dict[str, float]:
    from concurrent import futures

    import grpc

    from cloud.tuf_repo import TufRepository
    from fleet.tuf_client import GrpcFetcher, TufClient, TufClientError
    from protos import device_pb2, device_pb2_grpc
    from runtime.bundle.chunking import chunk_file

    repo = TufRepository.create(work / "repo")
    efbs = {
        v: layered_efb(work, policy_bytes, v, seed, key) for v, seed in (("1.0.0", 1), ("1.1.0", 2))
    }
    for v, efb in efbs.items():
        repo.add_target(
            f"bundles/layers-{v}.efb", efb, {"name": "layers", "chunks": chunk_file(efb)}
        )
    repo.add_target("bundles/plain-1.0.0.efb", efbs["1.0.0"], {"name": "plain"})

    sent = [0]
    drop_after = [-1]  # target bytes the link carries before it drops (-1: never)

    class Files(device_pb2_grpc.DeviceServiceServicer):  # type: ignore[misc]
        def FetchFile(self, request, context):  # type: ignore[no-untyped-def]
            base = (
                repo.metadata_dir
                if request.kind == device_pb2.FILE_KIND_METADATA
                else repo.targets_dir
            )
            path = base / request.path
            if not path.is_file():
                context.abort(grpc.StatusCode.NOT_FOUND, request.path)
            size = path.stat().st_size
            end = min(size, request.offset + request.length) if request.length else size
            piece = request.max_chunk_bytes or (1 << 20)
            with path.open("rb") as fh:
                fh.seek(request.offset)
                offset = request.offset
                while offset < end and context.is_active():
                    if drop_after[0] == 0:
                        context.abort(grpc.StatusCode.UNAVAILABLE, "link dropped")
                    want = min(piece, end - offset)
                    if drop_after[0] > 0:
                        want = min(want, drop_after[0])
                        drop_after[0] -= want
                    data = fh.read(want)
                    sent[0] += len(data)
                    yield device_pb2.FileChunk(
                        offset=offset, data=data, total_size=size, last=offset + len(data) >= end
                    )
                    offset += len(data)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    device_pb2_grpc.add_DeviceServiceServicer_to_server(Files(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = device_pb2_grpc.DeviceServiceStub(channel)
    try:

        def view(agent: str):  # type: ignore[no-untyped-def]
            fetcher = GrpcFetcher(stub.FetchFile, chunk_bytes=256 << 10)
            return TufClient(work / agent, repo.metadata_dir / "1.root.json", fetcher).refresh()

        t_plain = t_chunked = float("inf")
        for r in range(3):  # alternate, keep the least disturbed run of each
            plain = view(f"plain{r}")
            t0 = time.perf_counter()
            plain.download(plain.target("bundles/plain-1.0.0.efb"))
            t_plain = min(t_plain, time.perf_counter() - t0)
            robot = view(f"robot{r}")
            t0 = time.perf_counter()
            robot.download(robot.target("bundles/layers-1.0.0.efb"))
            t_chunked = min(t_chunked, time.perf_counter() - t0)
        first_chunks = robot.last_chunk_stats.chunks
        sent[0] = 0
        robot.download(robot.target("bundles/layers-1.1.0.efb"))
        update_sent = sent[0]
        update_stats = robot.last_chunk_stats

        resumer = view("resumer")
        target = resumer.target("bundles/layers-1.1.0.efb")
        drop_after[0] = target.length // 2
        with contextlib.suppress(TufClientError):
            resumer.download(target)
        drop_after[0] = -1
        journal = work / "resumer" / "downloads" / f"{target.sha256}.chunked.done"
        stored_before = len(journal.read_text().splitlines())
        resumer.download(target)
        total = len(target.custom["chunks"])
        refetched = resumer.last_chunk_stats.fetched_chunks - (total - stored_before)
    finally:
        channel.close()
        server.stop(None)
    v2_size = efbs["1.1.0"].stat().st_size
    return {
        "policy_bytes": v2_size,
        "t_plain": t_plain,
        "t_chunked": t_chunked,
        "chunks": first_chunks,
        "update_sent": update_sent,
        "update_fetched_chunks": update_stats.fetched_chunks,
        "delta_bytes_ratio": update_sent / v2_size,
        "throughput_ratio": t_plain / t_chunked,
        "resume_stored_before": stored_before,
        "resume_refetch_chunks": refetched,
    }


MOSQUITTO_CONF = "listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
"""Plain MQTT on loopback; no Nagle delay on the broker's sockets (as broker-config)."""


def mqtt_path(work: Path, policy_bytes: int) -> dict[str, float] | None:
    """The same chunked target over gRPC and over MQTT blocks, from one real plane."""
    from cloud.testing import running_plane
    from fleet.mqtt import MqttSettings, MqttTransport
    from fleet.mqtt_fetch import MqttBlockClient, MqttFetcher
    from fleet.tuf_client import GrpcFetcher, TufClient
    from protos import device_pb2_grpc
    from tests.servers import mosquitto_binary, run_mosquitto

    if mosquitto_binary() is None:
        return None
    with (
        run_mosquitto(MOSQUITTO_CONF) as broker,
        running_plane(
            work / "plane",
            overrides={"broker_url": f"mqtt://127.0.0.1:{broker.port}"},
            files_over_mqtt=True,
        ) as plane,
    ):
        key = plane.home.key_path("model-signing", private=True)
        (work / "mqtt").mkdir()
        rec = plane.publish(layered_efb(work / "mqtt", policy_bytes, "1.0.0", 1, key))
        creds = plane.device("bench-robot")
        root = plane.home.tuf / "metadata" / "1.root.json"
        channel = plane.channel(creds)
        stub = device_pb2_grpc.DeviceServiceStub(channel)
        transport = MqttTransport(MqttSettings(port=broker.port), "bench-robot")
        blocks = MqttBlockClient(transport, "bench-robot", block_bytes=256 << 10)
        transport.start()
        try:
            assert transport.wait_connected(10), transport.last_error
            times = {"grpc": float("inf"), "mqtt": float("inf")}
            for r in range(2):
                for name in ("grpc", "mqtt"):
                    fetcher = (
                        GrpcFetcher(stub.FetchFile, chunk_bytes=256 << 10)
                        if name == "grpc"
                        else MqttFetcher(blocks)
                    )
                    view = TufClient(work / f"mqtt-{name}{r}", root, fetcher).refresh()
                    target = view.target(rec.target_path)
                    t0 = time.perf_counter()
                    view.download(target)
                    times[name] = min(times[name], time.perf_counter() - t0)
        finally:
            transport.stop()
            channel.close()
        return {
            "bytes": float(target.length),
            "t_grpc": times["grpc"],
            "t_mqtt": times["mqtt"],
            "blocks": float(blocks.counters["blocks"]),
            "retries": float(blocks.counters["retries"]),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small-mb", type=int, default=100)
    ap.add_argument("--large-mb", type=int, default=1000)
    ap.add_argument("--policy-mb", type=int, default=100)
    ap.add_argument("--mqtt-mb", type=int, default=100, help="0: skip the MQTT path")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeflux-dist-") as tmp:
        work = Path(tmp)
        generate_signing_key(work / "k.pem", work / "k.pub")
        trust = TrustStore(work / "trust")
        trust.add("models", (work / "k.pub").read_bytes())
        dist = distribution(work, args.policy_mb * 1_000_000, work / "k.pem")
        small = measure(work, args.small_mb * 1_000_000, trust, work / "k.pem")
        large = measure(work, args.large_mb * 1_000_000, trust, work / "k.pem")
        mqtt = mqtt_path(work, args.mqtt_mb * 1_000_000) if args.mqtt_mb else None
    mb = dist["policy_bytes"] / 1e6
    print(f"chunked distribution of a {mb:.0f} MB bundle ({dist['chunks']} chunks)")
    print(f"  plain download          {dist['t_plain']:.3f} s")
    print(
        f"  chunked download        {dist['t_chunked']:.3f} s   "
        f"throughput ratio {dist['throughput_ratio']:.2f}"
    )
    print(
        f"  update, last layer new  {dist['update_sent'] / 1e6:.1f} MB sent "
        f"({dist['update_fetched_chunks']} chunks)   delta ratio {dist['delta_bytes_ratio']:.3f}"
    )
    print(
        f"  resume after interruption at 50%: {dist['resume_stored_before']} chunks kept, "
        f"{dist['resume_refetch_chunks']} refetched"
    )
    if mqtt is None:
        print("MQTT path: skipped (--mqtt-mb 0, or Mosquitto is not installed)")
    else:
        print(
            f"MQTT path, {mqtt['bytes'] / 1e6:.0f} MB from a real plane: gRPC "
            f"{mqtt['t_grpc']:.3f} s, MQTT {mqtt['t_mqtt']:.3f} s ({mqtt['blocks']:.0f} blocks, "
            f"{mqtt['retries']:.0f} retried)   throughput ratio "
            f"{mqtt['t_grpc'] / mqtt['t_mqtt']:.2f}"
        )
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
                "delta_bytes_ratio": dist["delta_bytes_ratio"],
                "throughput_ratio": dist["throughput_ratio"],
                "resume_refetch_chunks": dist["resume_refetch_chunks"],
                "verify_peak_bytes_100mb": int(small["peak"]),
                "verify_peak_bytes_1gb": int(large["peak"]),
                "small_bytes": int(small["bytes"]),
                "large_bytes": int(large["bytes"]),
                "verify_time_ratio_large": large["verify_s"] / large["bare_s"],
                "mqtt_throughput_ratio": mqtt["t_grpc"] / mqtt["t_mqtt"] if mqtt else None,
                "mqtt_bytes": int(mqtt["bytes"]) if mqtt else None,
            }
        )
    )


if __name__ == "__main__":
    main()
