"""Measurements shared by `edgeflux runtime bench` and bench/runtime_step.py."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from runtime.adapters.null import NullAdapter
from runtime.loop import ControlLoop, LoadedPolicy, realtime_thread
from runtime.metrics import MetricsSnapshot
from runtime.session import PolicySession


@dataclass(frozen=True)
class StepStats:
    median_us: float
    p99_us: float

    @classmethod
    def of(cls, samples_ns: list[int]) -> StepStats:
        arr = np.asarray(samples_ns, np.float64) / 1e3
        return cls(float(np.median(arr)), float(np.percentile(arr, 99)))


def observation_inside(policy: LoadedPolicy, seed: int = 0) -> np.ndarray:
    io = policy.manifest.io
    lo = np.nan_to_num(np.asarray(io.obs_low, np.float64), neginf=-1.0, posinf=1.0)
    hi = np.nan_to_num(np.asarray(io.obs_high, np.float64), neginf=-1.0, posinf=1.0)
    rng = np.random.default_rng(seed)
    return rng.uniform(lo, hi).astype(np.float32)


def tick_path(policy: LoadedPolicy, n: int, warmup: int = 500) -> StepStats:
    """The runtime's whole per-tick path (read, validate, infer, filter, write, metrics)."""
    obs = observation_inside(policy)
    loop = ControlLoop(NullAdapter(obs.size), policy, watchdog=False)
    loop.adapter._obs[:] = obs  # type: ignore[attr-defined]
    clock = time.perf_counter_ns
    samples = []
    for i in range(n + warmup):
        t0 = clock()
        loop._tick(t0 + 10**9, t0)
        if i >= warmup:
            samples.append(clock() - t0)
    return StepStats.of(samples)


def bare_run(session: PolicySession, obs: np.ndarray, n: int, warmup: int = 500) -> StepStats:
    """`InferenceSession.run` on a numpy batch of one: what a hand-written loop does."""
    batch = obs.reshape(1, -1)
    clock = time.perf_counter_ns
    samples = []
    for i in range(n + warmup):
        t0 = clock()
        session.run(batch)
        if i >= warmup:
            samples.append(clock() - t0)
    return StepStats.of(samples)


def loop_run(
    policy: LoadedPolicy, rate_hz: float, seconds: float, rt_priority: int | None = None
) -> MetricsSnapshot:
    """The loop in a thread of its own (as the service runs it) for `seconds`."""
    obs = observation_inside(policy)
    adapter = NullAdapter(obs.size)
    adapter._obs[:] = obs
    loop = ControlLoop(adapter, policy, rate_hz=rate_hz, realtime_priority=rt_priority)
    with realtime_thread(max(1, rt_priority - 1) if rt_priority else None):
        loop.start()
        time.sleep(seconds)
        loop.stop()
    return loop.snapshot()
