"""Every consumer of a bundle's policy acts exactly like the runtime's tick.

The reference is `ControlLoop._tick`, the function the robot runs every period, fed
by an adapter (a list of observations, or a real gymnasium Pendulum). Against it:
the kernel itself, a shadow run, the parity campaign's student arm, `distill eval`'s
`OnnxPolicy` and the router's policy worker, for bundles with a normaliser in the
manifest, a rate limit, each fallback kind and a graph with a fixed batch of 1. On
1,000 random observations (inside and outside the bounds, NaN and Inf too) and 20
closed-loop episodes, actions agree to 1e-6 and intervention counts are identical.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from cloud.attest.units import student_kernel
from cloud.router.worker import policy_model
from distill.evaluate import OnnxPolicy, rollout_batch
from runtime.adapters.gym import GymAdapter
from runtime.kernel import KernelPolicy, PolicyKernel
from runtime.loop import ControlLoop, LoadedPolicy, _Shadow
from runtime.manifest import BundleManifest
from runtime.session import PolicySession
from tests.runtime import _models
from tests.runtime.conftest import manifest

TOL = 1e-6
FAR = 10**15  # a deadline that never passes: the tick's arithmetic, not the machine's load


def _fixed_batch(model: bytes) -> bytes:
    """The same graph with its batch dimension fixed to 1 (input and output)."""
    m = onnx.load_from_string(model)
    for value in (*m.graph.input, *m.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = 1
    onnx.checker.check_model(m)
    return m.SerializeToString()


# Action bounds narrower than the graph's ±2 so that clamping happens too.
_IO = {"action_low": [-1.5], "action_high": [1.5]}
CASES: dict[str, tuple[bool, dict[str, Any], dict[str, Any]]] = {
    # name: (fixed batch graph, io overrides, control overrides)
    "normaliser": (
        False,
        {"obs_mean": [0.1, -0.2, 0.5], "obs_std": [0.5, 2.0, 4.0]},
        {"fallback": "zero"},
    ),
    "rate_limit_hold": (False, {}, {"fallback": "hold", "max_action_delta": 0.2}),
    "safe": (False, {}, {"fallback": "safe", "safe_action": [0.7]}),
    "fixed_batch": (
        True,
        {"obs_mean": [0.0, 0.0, 1.0], "obs_std": [1.0, 1.0, 3.0]},
        {"fallback": "hold", "max_action_delta": 0.5},
    ),
}


def _case(name: str, tmp_path: Path) -> tuple[BundleManifest, bytes, Path]:
    fixed, io, control = CASES[name]
    model = _models.mlp(3, 1, hidden=(16,), seed=7, scale=3.0)
    if fixed:
        model = _fixed_batch(model)
    base = manifest(control=control)
    data = base.model_dump(mode="json", by_alias=True)
    data["io"].update({**_IO, **io})
    shape: list[int | str] = [1, 3] if fixed else [-1, 3]
    data["io"]["inputs"][0]["shape"] = shape
    m = BundleManifest.model_validate(data)
    bundle = tmp_path / name
    bundle.mkdir()
    (bundle / "policy.onnx").write_bytes(model)
    (bundle / "edgeflux.json").write_text(m.to_json())
    return m, model, bundle


class _ListAdapter:
    """Feeds given observations (any objects) and records what the loop writes."""

    def __init__(self, observations: list[Any]) -> None:
        self._obs = iter(observations)
        self.written: list[np.ndarray] = []

    def read_observation(self) -> Any:
        return next(self._obs)

    def write_action(self, action: np.ndarray) -> None:
        self.written.append(np.array(action, copy=True))

    def is_safe_to_switch(self) -> bool:
        return True


def _tick(loop: ControlLoop, n: int) -> None:
    for _ in range(n):
        loop._tick(FAR, time.perf_counter_ns())


def _observations(m: BundleManifest, n: int = 1000) -> list[np.ndarray]:
    """Inside the bounds, up to 40% outside them, and a few NaN / Inf vectors."""
    rng = np.random.default_rng(11)
    lo, hi = np.array(m.io.obs_low), np.array(m.io.obs_high)
    span = hi - lo
    out = [rng.uniform(lo - 0.2 * span, hi + 0.2 * span).astype(np.float32) for _ in range(n)]
    for i in rng.choice(n, 30, replace=False):
        out[i][rng.integers(3)] = rng.choice([np.nan, np.inf, -np.inf])
    return out


def _interventions(counts: Counter[str]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_consumer_matches_the_tick_on_random_observations(case: str, tmp_path: Path) -> None:
    m, model, bundle = _case(case, tmp_path)
    obs = _observations(m)
    session = PolicySession(model)
    adapter = _ListAdapter([o.copy() for o in obs])
    loop = ControlLoop(adapter, LoadedPolicy(manifest=m, session=session), watchdog=False)
    shadow = _Shadow(LoadedPolicy(manifest=m, session=PolicySession(model)), len(obs))
    loop._shadow = shadow
    _tick(loop, len(obs))
    tick = np.array(adapter.written)
    tick_counts = _interventions(loop.counters.interventions)
    assert tick.shape == (len(obs), 1)
    assert sum(tick_counts.values()) > 50, tick_counts  # the envelope was exercised
    assert tick_counts.get("obs_out_of_bounds", 0) > 0 and tick_counts.get("obs_nonfinite", 0) > 0

    kernel = PolicyKernel(m, PolicySession(model))
    direct = np.array([kernel.step(o.copy()).copy() for o in obs])
    np.testing.assert_allclose(direct, tick, atol=TOL, rtol=0)
    assert _interventions(kernel.counts) == tick_counts

    result = shadow.result()
    assert result.ticks == len(obs) and result.divergence_max <= TOL
    assert _interventions(shadow.kernel.counts) == tick_counts

    # One episode of 1,000 steps in the batch interface the evaluators use.
    for label, policy in (
        ("campaign", student_kernel(model, m.model_dump(mode="json", by_alias=True))),
        ("distill eval", OnnxPolicy(bundle / "policy.onnx")),
    ):
        assert isinstance(policy, KernelPolicy)
        policy.reset(1)
        got = np.array([policy.act(o[None].copy())[0] for o in obs])
        np.testing.assert_allclose(got, tick, atol=TOL, rtol=0, err_msg=label)
        assert _interventions(policy.counts) == tick_counts, label

    # The router's worker: each call is a one-tick episode, so its reference is the
    # first tick of a fresh loop (finite observations: the wire refuses NaN earlier).
    worker = policy_model(bundle / "policy.onnx")
    for o in obs[:200]:
        if not np.isfinite(o).all():
            continue
        first = _ListAdapter([o.copy()])
        fresh = ControlLoop(first, LoadedPolicy(manifest=m, session=session), watchdog=False)
        _tick(fresh, 1)
        assert abs(worker([float(x) for x in o])[0] - float(first.written[0][0])) <= TOL


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_consumer_matches_the_tick_in_closed_loop(case: str, tmp_path: Path) -> None:
    m, model, bundle = _case(case, tmp_path)
    seeds = list(range(5000, 5020))
    steps = 200  # Pendulum-v1 truncates at 200
    session = PolicySession(model)
    tick_actions, tick_counts, tick_returns = [], Counter[str](), []
    for seed in seeds:
        adapter = GymAdapter("Pendulum-v1", seed=seed)
        loop = ControlLoop(adapter, LoadedPolicy(manifest=m, session=session), watchdog=False)
        written: list[np.ndarray] = []
        write = adapter.write_action

        def record(a: np.ndarray, write: Any = write, written: list[np.ndarray] = written) -> None:
            written.append(np.array(a, copy=True))
            write(a)

        adapter.write_action = record  # type: ignore[method-assign]
        _tick(loop, steps)
        adapter.close()
        tick_actions.append(np.array(written))
        tick_returns.append(adapter.episode_returns[0])
        tick_counts.update(loop.counters.interventions)

    for label, policy in (
        ("campaign", student_kernel(model, m.model_dump(mode="json", by_alias=True))),
        ("distill eval", OnnxPolicy(bundle / "policy.onnx")),
    ):
        returns, records = rollout_batch("Pendulum-v1", policy, seeds, record=True)
        for i in range(len(seeds)):
            np.testing.assert_allclose(
                records[i]["actions"], tick_actions[i], atol=TOL, rtol=0, err_msg=label
            )
        np.testing.assert_allclose(returns, tick_returns, atol=1e-3, err_msg=label)
        assert _interventions(policy.counts) == _interventions(tick_counts), label


@pytest.mark.parametrize(
    ("io", "message"),
    [
        ({"obs_mean": [0.0, float("nan"), 0.0], "obs_std": [1.0, 1.0, 1.0]}, "finite"),
        ({"obs_mean": [0.0, 0.0, 0.0], "obs_std": [1.0, float("inf"), 1.0]}, "finite"),
        ({"obs_mean": [0.0, 0.0, 0.0]}, "go together"),
    ],
)
def test_a_normaliser_the_kernel_could_not_apply_is_refused_by_the_manifest(
    io: dict[str, Any], message: str
) -> None:
    from runtime.manifest import ManifestError, parse_manifest

    data = manifest().model_dump(mode="json", by_alias=True)
    data["io"].update(io)
    with pytest.raises(ManifestError, match=message):
        parse_manifest(json.dumps(data))
