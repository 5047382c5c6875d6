"""Runtime per-tick cost, loop timing and hot swaps.

Same process, same signed bundle (a 17→256→256→6 ELU MLP):

1. the runtime's whole per-tick path (read observation, validate, infer through
   IOBinding, validate/clamp/rate-limit the action, write, record metrics) against a
   bare ``onnxruntime.InferenceSession.run`` on the same model with the same thread
   settings, measured in interleaved rounds; goal median ratio <= 1.5, p99 <= 2.0;
2. torch eager (``inference_mode``) latency of the same MLP, what users run today;
3. a 500 Hz loop with a no-op adapter for ``--seconds`` (default 60): deadline-miss
   rate (goal < 0.1 %) and p99 jitter, with ``--swaps`` (default 100) hot swaps during
   it — each one verifies the other signed bundle, loads and warms it in a background
   thread, and switches on a tick boundary; goal: zero misses on a switching tick;
4. the same loop under load: two CPU-bound neighbour processes (``yes > /dev/null``
   twice) share the machine, once with the loop at normal priority and once as the
   flashed robot runs it (SCHED_FIFO 50, memory locked, flight recorder on; skipped
   where the process may not have real-time priority). Staging is timed in its parts
   (verification with its hashing, session creation, warm-up) with the deadline misses
   during each part;
   goal for the flashed configuration: 0 misses on switching ticks and while staging.

Usage::

    .venv/bin/python bench/runtime_step.py               # full run (~3.5 min)
    .venv/bin/python bench/runtime_step.py --seconds 10  # shorter
    .venv/bin/python bench/runtime_step.py --no-loaded   # idle loop only

Prints a table, the ratios and one JSON line (last line). The machine may be shared:
compare ratios measured in one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime import _bench
from runtime.adapters.null import NullAdapter
from runtime.bundle import (
    create_bundle,
    generate_signing_key,
    sign_bundle,
    verify_bundle,
)
from runtime.loop import ControlLoop, LoadedPolicy, make_thread_realtime, realtime_thread
from runtime.manifest import BundleManifest
from runtime.realtime import lock_memory
from runtime.recording import FlightRecorder
from runtime.session import PolicySession
from runtime.trust import TrustStore

OBS, HID, ACT = 17, 256, 6


def weights(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    sizes = [OBS, HID, HID, ACT]
    return [
        (
            (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32),
            (rng.standard_normal(b) * 0.1).astype(np.float32),
        )
        for a, b in itertools.pairwise(sizes)
    ]


def onnx_mlp(ws: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    nodes, inits, x = [], [], "obs"
    for i, (w, b) in enumerate(ws):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
        ]
        last = i == len(ws) - 1
        nodes.append(helper.make_node("Tanh" if last else "Elu", [f"a{i}"], [f"h{i}"]))
        x = f"h{i}"
    nodes.append(helper.make_node("Identity", [x], ["action"]))
    graph = helper.make_graph(
        nodes,
        "policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", OBS])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", ACT])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def manifest(version: str, sequence: int, rate_hz: float) -> BundleManifest:
    return BundleManifest.model_validate(
        {
            "schema": "edgeflux.bundle/v1",
            "name": "bench-mlp",
            "version": version,
            "sequence": sequence,
            "io": {
                "inputs": [{"name": "obs", "shape": [-1, OBS]}],
                "outputs": [{"name": "action", "shape": [-1, ACT]}],
                "obs_low": [-1.0] * OBS,
                "obs_high": [1.0] * OBS,
                "action_low": [-1.0] * ACT,
                "action_high": [1.0] * ACT,
            },
            "control": {
                "rate_hz": rate_hz,
                "deadline_ms": 1000.0 / rate_hz,
                "fallback": "hold",
                "max_action_delta": 0.5,
            },
        }
    )


def make_bundles(tmp: Path, rate_hz: float) -> tuple[list[Path], TrustStore, bytes]:
    generate_signing_key(tmp / "k.pem", tmp / "k.pub")
    trust = TrustStore(tmp / "trust")
    trust.add("models", (tmp / "k.pub").read_bytes())
    out = []
    first = b""
    for i in range(2):
        model = onnx_mlp(weights(i))
        first = first or model
        (tmp / f"p{i}.onnx").write_bytes(model)
        b = create_bundle(tmp / f"p{i}.onnx", manifest(f"1.{i}.0", i + 1, rate_hz), tmp / f"b{i}")
        sign_bundle(b, tmp / "k.pem")
        out.append(b)
    return out, trust, first


PHASES = ("verify", "session", "warmup")


def load(
    bundle: Path,
    trust: TrustStore,
    phase: dict[str, list[float]] | None = None,
    misses: object = None,
) -> LoadedPolicy:
    """Verify (hash + signature), create the session, warm it up: what staging does.

    With `phase`, each part's wall time (ms) and, with `misses` (a callable returning the
    loop's miss count), the misses during it are appended under its name.
    """
    count = misses if callable(misses) else (lambda: 0)
    t, m = time.perf_counter(), count()

    def mark(name: str) -> None:
        nonlocal t, m
        now, missed = time.perf_counter(), count()
        if phase is not None:
            phase[name].append((now - t) * 1e3)
            phase[name + "_misses"].append(missed - m)
        t, m = now, missed

    v = verify_bundle(bundle, trust)
    mark("verify")
    session = PolicySession((bundle / "policy.onnx").read_bytes(), warmup_runs=0)
    mark("session")
    session.warm_up(20)
    mark("warmup")
    return LoadedPolicy(v.manifest, session, policy_sha256=v.policy_sha256)


@contextlib.contextmanager
def neighbours(n: int) -> object:
    """`n` CPU-bound processes (``yes > /dev/null``) for the duration of the block."""
    procs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(5)


def pct(samples: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(samples) / 1e3, q))


def step_costs(
    policy: LoadedPolicy, model: bytes, steps: int, rounds: int, record_dir: Path
) -> dict[str, float]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    bare = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    obs = _bench.observation_inside(policy)
    batch = obs.reshape(1, -1)
    adapter = NullAdapter(OBS)
    adapter._obs[:] = obs
    loop = ControlLoop(adapter, policy, watchdog=False)
    # The same tick with the flight recorder on. Its writer thread is not started here:
    # ticks back to back come ~100x faster than a 500 Hz loop makes them, and a writer
    # keeping up with that would measure contention no robot sees. The loop thread's
    # part is measured here; the writer's (encode + MCAP) per tick separately below.
    recorded = ControlLoop(adapter, policy, watchdog=False)
    recorder = FlightRecorder(record_dir, quota_bytes=256 * 1024 * 1024, max_pending=10**6)
    recorded.recorder = recorder
    # Same answer from both paths (the runtime clamps/limits nothing for this input).
    ref = bare.run(["action"], {"obs": batch})[0][0]
    for _ in range(3):  # from the initial action, max_action_delta needs a few ticks
        loop._tick(time.perf_counter_ns() + 10**9, time.perf_counter_ns())
    assert np.allclose(loop.last_action, ref, atol=1e-6), (loop.last_action, ref)
    clock = time.perf_counter_ns
    b_s: list[int] = []
    r_s: list[int] = []
    rec_s: list[int] = []
    for _ in range(rounds):  # interleaved, so machine load hits all alike
        for _ in range(200):
            bare.run(["action"], {"obs": batch})
            loop._tick(clock() + 10**9, clock())
            recorded._tick(clock() + 10**9, clock())
        for _ in range(steps // rounds):
            t0 = clock()
            bare.run(["action"], {"obs": batch})
            b_s.append(clock() - t0)
        for _ in range(steps // rounds):
            t0 = clock()
            loop._tick(t0 + 10**9, t0)
            r_s.append(clock() - t0)
        for _ in range(steps // rounds):
            t0 = clock()
            recorded._tick(t0 + 10**9, t0)
            rec_s.append(clock() - t0)
    t0 = clock()
    written = recorder.drain()
    writer_ns = clock() - t0
    recorder.stop()
    assert recorder.error is None and written >= len(rec_s) and recorder.dropped == 0
    return {
        "recorded_tick_median_us": pct(rec_s, 50),
        "recorded_tick_p99_us": pct(rec_s, 99),
        "recorded_ticks_written": float(recorder.recorded),
        "recorder_writer_us_per_tick": writer_ns / 1e3 / max(written, 1),
        "bare_median_us": pct(b_s, 50),
        "bare_p99_us": pct(b_s, 99),
        "tick_median_us": pct(r_s, 50),
        "tick_p99_us": pct(r_s, 99),
    }


def torch_eager(
    ws: list[tuple[np.ndarray, np.ndarray]], obs: np.ndarray, steps: int
) -> dict[str, float]:
    import torch

    torch.set_num_threads(1)
    layers: list[torch.nn.Module] = []
    for i, (w, b) in enumerate(ws):
        lin = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            lin.bias.copy_(torch.from_numpy(b))
        layers += [lin, torch.nn.Tanh() if i == len(ws) - 1 else torch.nn.ELU()]
    net = torch.nn.Sequential(*layers).eval()
    x = torch.from_numpy(obs.reshape(1, -1))
    samples = []
    with torch.inference_mode():
        out = net(x).numpy()[0]
        for _ in range(500):
            net(x)
        for _ in range(steps):
            t0 = time.perf_counter_ns()
            net(torch.from_numpy(obs.reshape(1, -1))).numpy()
            samples.append(time.perf_counter_ns() - t0)
    return {"torch_median_us": pct(samples, 50), "torch_p99_us": pct(samples, 99), "_out": out}  # type: ignore[dict-item]


def loop_with_swaps(
    bundles: list[Path],
    trust: TrustStore,
    rate_hz: float,
    seconds: float,
    swaps: int,
    spin_us: float,
    rt_priority: int | None,
    record_dir: Path | None = None,
) -> dict[str, float]:
    """The loop with hot swaps; with `record_dir`, the flight recorder on (as flashed)."""
    if rt_priority:
        # As the runtime service does: every thread that takes the GIL is real-time,
        # so none can be preempted while holding it (priority inversion).
        make_thread_realtime(max(1, rt_priority - 1))
    first = load(bundles[0], trust)
    adapter = NullAdapter(OBS)
    adapter._obs[:] = _bench.observation_inside(first)
    loop = ControlLoop(adapter, first, spin_us=spin_us, realtime_priority=rt_priority)
    recorder = None
    if record_dir is not None:
        recorder = FlightRecorder(record_dir, quota_bytes=256 * 1024 * 1024)
        recorder.start()
        loop.recorder = recorder
    loop.start()
    t_start = time.perf_counter()
    swap_ms: list[float] = []
    window_misses = 0
    phase: dict[str, list[float]] = {k: [] for p in PHASES for k in (p, p + "_misses")}
    try:
        interval = seconds / (swaps + 1) if swaps else seconds
        for i in range(swaps):
            target = t_start + (i + 1) * interval
            time.sleep(max(0.0, target - time.perf_counter()))
            before = loop.counters.deadline_misses
            t0 = time.perf_counter()
            # The whole hot-swap path: verify, load, warm (in this background thread)...
            candidate = load(
                bundles[(i + 1) % 2], trust, phase, lambda: loop.counters.deadline_misses
            )
            # ...then switch on a tick boundary.
            loop.swap(candidate, timeout_s=5)
            swap_ms.append((time.perf_counter() - t0) * 1e3)
            window_misses += loop.counters.deadline_misses - before
        time.sleep(max(0.0, t_start + seconds - time.perf_counter()))
    finally:
        loop.stop()
        if recorder is not None:
            recorder.stop()
    snap = loop.snapshot()
    c = loop.counters
    return (
        {
            "loop_rate_hz": rate_hz,
            "loop_seconds": time.perf_counter() - t_start,
            "loop_ticks": snap.ticks,
            "loop_misses": snap.deadline_misses,
            "loop_miss_rate": snap.miss_rate,
            "loop_jitter_p99_ms": snap.jitter_p99_ms,
            "loop_jitter_max_ms": snap.jitter_max_ms,
            "loop_latency_p50_ms": snap.latency_p50_ms,
            "loop_latency_p99_ms": snap.latency_p99_ms,
            "loop_latency_p999_ms": snap.latency_p999_ms,
            "swaps": c.swaps if hasattr(c, "swaps") else loop.swaps,
            "swap_tick_misses": c.swap_misses,
            "misses_while_staging": window_misses,
            "stage_and_swap_median_ms": float(np.median(swap_ms)) if swap_ms else 0.0,
            "scheduling": loop.scheduling.describe() if loop.scheduling else "",
            "recorded_ticks": float(recorder.recorded) if recorder is not None else 0.0,
        }
        | {
            f"stage_{k}": (
                float(sum(v)) if k.endswith("_misses") else float(np.median(v)) if v else 0.0
            )
            for k, v in phase.items()
        }
        | _attribution(snap.deadline_misses, window_misses, sum(swap_ms) / 1e3, seconds, rate_hz)
    )


def _attribution(
    misses: int, in_windows: int, window_s: float, seconds: float, rate_hz: float
) -> dict[str, float]:
    """Miss rate per slot inside staging windows vs outside: what the swaps add."""
    slots_in = max(window_s * rate_hz, 1.0)
    slots_out = max((seconds - window_s) * rate_hz, 1.0)
    return {
        "miss_rate_while_staging": in_windows / slots_in,
        "miss_rate_otherwise": (misses - in_windows) / slots_out,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the 500 Hz loop run")
    ap.add_argument("--swaps", type=int, default=100, help="hot swaps during the loop run")
    ap.add_argument("--rate-hz", type=float, default=500.0)
    ap.add_argument("--steps", type=int, default=20_000, help="timed ticks per path")
    ap.add_argument("--spin-us", type=float, default=0.0, help="busy-wait before each tick")
    ap.add_argument("--rt-priority", type=int, help="SCHED_FIFO priority of the loop thread")
    ap.add_argument(
        "--gil-switch-ms", type=float, default=0.5, help="sys.setswitchinterval, as the runtime"
    )
    ap.add_argument(
        "--no-loaded", action="store_true", help="skip the runs with CPU-bound neighbours"
    )
    ap.add_argument("--neighbours", type=int, default=2, help="CPU-bound neighbour processes")
    ap.add_argument(
        "--flashed-rt-priority", type=int, default=50, help="realtime_priority the flash writes"
    )
    args = ap.parse_args()
    sys.setswitchinterval(args.gil_switch_ms / 1000.0)

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bundles, trust, model = make_bundles(tmp, args.rate_hz)
        policy = load(bundles[0], trust)
        with realtime_thread(args.rt_priority):  # the same for both paths
            steps = step_costs(policy, model, args.steps, rounds=10, record_dir=tmp / "rec")
        obs = _bench.observation_inside(policy)
        eager = torch_eager(weights(0), obs, min(args.steps, 5000))
        torch_out = eager.pop("_out")
        ort_out = policy.session.run(obs.reshape(1, -1))[0]
        steps["torch_vs_ort_max_abs"] = float(np.max(np.abs(np.asarray(torch_out) - ort_out)))
        steps |= eager
        loop = loop_with_swaps(
            bundles, trust, args.rate_hz, args.seconds, args.swaps, args.spin_us, args.rt_priority
        )
        loaded: dict[str, dict[str, float]] = {}
        if not args.no_loaded:
            # Normal priority first: the real-time run leaves this process real-time.
            with neighbours(args.neighbours):
                loaded["normal"] = loop_with_swaps(
                    bundles, trust, args.rate_hz, args.seconds, args.swaps, args.spin_us, None
                )
            if _fifo_allowed():
                lock_memory()  # as the flashed unit's lock_memory = true
                with neighbours(args.neighbours):
                    # The flashed robot: SCHED_FIFO 50, memory locked, flight recorder on.
                    loaded["realtime"] = loop_with_swaps(
                        bundles, trust, args.rate_hz, args.seconds, args.swaps, args.spin_us,
                        args.flashed_rt_priority, record_dir=tmp / "flashed-rec",
                    )  # fmt: skip

    r = steps | loop
    r["median_ratio"] = r["tick_median_us"] / r["bare_median_us"]
    r["p99_ratio"] = r["tick_p99_us"] / r["bare_p99_us"]
    r["torch_vs_tick_median"] = r["torch_median_us"] / r["tick_median_us"]
    r["recorder_overhead"] = r["recorded_tick_median_us"] / r["tick_median_us"] - 1.0
    r["recorder_writer_cpu_at_rate"] = r["recorder_writer_us_per_tick"] * args.rate_hz / 1e6
    goals = {
        "median_ratio<=1.5": r["median_ratio"] <= 1.5,
        "p99_ratio<=2.0": r["p99_ratio"] <= 2.0,
        "recorder_overhead<=5%": r["recorder_overhead"] <= 0.05,
        "miss_rate<0.1%": r["loop_miss_rate"] < 0.001,
        "zero_swap_tick_misses": r["swap_tick_misses"] == 0,
    }
    load1 = os.getloadavg()[0]
    print(
        f"runtime_step: {OBS}->{HID}->{HID}->{ACT} MLP, CPU, 1 intra-op thread, "
        f"load average {load1:.2f} on {os.cpu_count()} cores"
    )
    print(f"{'path':<34}{'median µs':>11}{'p99 µs':>11}")
    for label, key in (
        ("InferenceSession.run (bare)", "bare"),
        ("runtime tick (whole path)", "tick"),
        ("runtime tick + flight recorder", "recorded_tick"),
        ("torch eager, inference_mode", "torch"),
    ):
        print(f"{label:<34}{r[key + '_median_us']:>11.2f}{r[key + '_p99_us']:>11.2f}")
    print(
        f"ratios vs bare: median {r['median_ratio']:.2f}x (goal <= 1.5), "
        f"p99 {r['p99_ratio']:.2f}x (goal <= 2.0); torch eager / runtime tick "
        f"{r['torch_vs_tick_median']:.2f}x; torch vs ort max |diff| {r['torch_vs_ort_max_abs']:.1e}"
    )
    print(
        f"flight recorder: +{r['recorder_overhead']:.1%} on the loop thread's tick median "
        f"(goal <= 5%); writer thread {r['recorder_writer_us_per_tick']:.1f} µs per tick "
        f"(encode + MCAP), {r['recorder_writer_cpu_at_rate']:.1%} of a core at "
        f"{args.rate_hz:g} Hz; {r['recorded_ticks_written']:.0f} ticks written to MCAP"
    )
    print(
        f"loop {r['loop_rate_hz']:g} Hz, {r['loop_seconds']:.1f} s: {r['loop_ticks']} ticks, "
        f"{r['loop_misses']} misses ({r['loop_miss_rate']:.4%}, goal < 0.1%), jitter p99 "
        f"{r['loop_jitter_p99_ms']:.3f} ms max {r['loop_jitter_max_ms']:.3f} ms, latency p50 "
        f"{r['loop_latency_p50_ms'] * 1e3:.1f} µs p99.9 {r['loop_latency_p999_ms'] * 1e3:.1f} µs"
    )
    print(
        f"hot swaps: {r['swaps']} (verify+load+warm+switch median "
        f"{r['stage_and_swap_median_ms']:.1f} ms), misses on switching ticks "
        f"{r['swap_tick_misses']}, misses while staging {r['misses_while_staging']} "
        f"(per-slot miss rate while staging {r['miss_rate_while_staging']:.3%} vs "
        f"{r['miss_rate_otherwise']:.3%} otherwise)"
    )
    _print_staging("idle", r)
    for name, run in loaded.items():
        _print_loop(f"loaded ({args.neighbours} neighbours), {name}", run)
        _print_staging(f"loaded, {name}", run)
    # The JSON's loaded_* fields: the configuration the flashed units use (real-time),
    # or normal priority where this machine withholds it.
    flashed = loaded.get("realtime") or loaded.get("normal")
    if flashed is not None:
        r["loaded_configuration"] = "realtime" if "realtime" in loaded else "normal"
        r["loaded_miss_rate"] = flashed["loop_miss_rate"]
        r["loaded_swap_misses"] = flashed["swap_tick_misses"]
        r["loaded_misses_while_staging"] = flashed["misses_while_staging"]
        r["loaded_runs"] = loaded
        if "realtime" in loaded:
            goals["loaded_rt_zero_swap_and_staging_misses"] = (
                flashed["swap_tick_misses"] == 0 and flashed["misses_while_staging"] == 0
            )
    print("goals: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in goals.items()))
    r["goals"] = goals
    r["load_average_1m"] = load1
    print(json.dumps({"bench": "runtime_step", **r}))


def _fifo_allowed() -> bool:
    try:
        before = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (AttributeError, OSError):
        print("loaded, realtime: skipped (this process may not use SCHED_FIFO)")
        return False
    os.sched_setscheduler(0, before[0], before[1])
    return True


def _print_loop(label: str, r: dict[str, float]) -> None:
    print(
        f"{label}: {r['loop_ticks']} ticks, {r['loop_misses']} misses "
        f"({r['loop_miss_rate']:.4%}), jitter p99 {r['loop_jitter_p99_ms']:.3f} ms, "
        f"misses on switching ticks {r['swap_tick_misses']} in {r['swaps']} swaps, "
        f"while staging {r['misses_while_staging']} [{r['scheduling']}]"
    )


def _print_staging(label: str, r: dict[str, float]) -> None:
    parts = ", ".join(
        f"{p} {r['stage_' + p]:.1f} ms ({r['stage_' + p + '_misses']:.0f} misses)" for p in PHASES
    )
    print(f"staging parts, {label} (median ms, total misses): {parts}")


if __name__ == "__main__":
    main()
