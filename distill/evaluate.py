"""Returns of a policy over shared initial states.

A *policy* here is anything with ``act(obs (n, obs_dim)) -> actions (n, act_dim)``
and optionally ``reset(n)``: a `Teacher`, a torch student (`TorchPolicy`), an ONNX
policy run by the runtime's policy kernel exactly as the robot runs it (`OnnxPolicy`:
envelope, normalisation, rate limit and fallback of the bundle's manifest) or
`RandomPolicy`. Seeds fix
the initial states, so two policies evaluated on the same seeds are *paired*
(the parity campaigns rely on this)::

    from distill.evaluate import episode_returns, OnnxPolicy
    from distill.teachers import OracleMPPITeacher
    seeds = list(range(1000, 1100))
    teacher = episode_returns("Pendulum-v1", OracleMPPITeacher(), seeds)
    student = episode_returns("Pendulum-v1", OnnxPolicy.from_bundle("bundle"), seeds)
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from distill.envs import EnvBatch, EnvSpec, env_spec
from runtime.kernel import KernelPolicy, load_kernel
from runtime.manifest import BundleManifest, load_manifest

__all__ = ["OnnxPolicy", "Policy", "RandomPolicy", "episode_returns", "rollout_batch"]


class Policy(Protocol):
    def act(self, obs: np.ndarray) -> np.ndarray: ...


class OnnxPolicy(KernelPolicy):
    """A policy graph with its manifest through `runtime.kernel` (the robot's tick, not torch).

    `model` is a policy.onnx path or its bytes; `manifest` defaults to the
    ``edgeflux.json`` beside a path. Episodes are stepped one observation at a time,
    so graphs with a fixed batch dimension of 1 work; `counts` holds the
    interventions by reason.
    """

    def __init__(self, model: str | Path | bytes, manifest: BundleManifest | None = None) -> None:
        if manifest is None:
            if isinstance(model, bytes):
                raise ValueError("an ONNX policy given as bytes needs its manifest")
            manifest = load_manifest(Path(model).parent)
        super().__init__(load_kernel(model, manifest))

    @classmethod
    def unpackaged(cls, onnx_bytes: bytes | Path, spec: EnvSpec) -> OnnxPolicy:
        """An exported graph with the manifest `distill.package` would give it for `spec`
        (bounds of the environment, default control settings). A path: a saved model
        (its external data beside it)."""
        from distill.package import build_manifest

        if isinstance(onnx_bytes, Path):
            manifest = build_manifest(
                onnx_path=onnx_bytes,
                spec=spec,
                name="unpackaged",
                version="0.0.0",
                sequence=0,
                provenance={},
            )
            return cls(onnx_bytes, manifest)
        with tempfile.TemporaryDirectory(prefix="edgeflux-eval-") as tmp:
            onnx_path = Path(tmp) / "policy.onnx"
            onnx_path.write_bytes(onnx_bytes)
            manifest = build_manifest(
                onnx_path=onnx_path,
                spec=spec,
                name="unpackaged",
                version="0.0.0",
                sequence=0,
                provenance={},
            )
        return cls(onnx_bytes, manifest)

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path) -> OnnxPolicy:
        """The bundle's policy.onnx with its manifest (not verified here)."""
        return cls(Path(bundle_dir) / "policy.onnx", load_manifest(bundle_dir))


class RandomPolicy:
    """Uniform actions within the bounds; the 'random' end of the quality range."""

    def __init__(self, env_id: str, seed: int = 0) -> None:
        spec = env_spec(env_id)
        self.low, self.high = spec.act_low, spec.act_high
        self._seed = seed
        self.rng = np.random.default_rng(seed)

    def reset(self, n: int) -> None:
        self.rng = np.random.default_rng(self._seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        u = self.rng.uniform(self.low, self.high, size=(len(obs), len(self.low)))
        return u.astype(np.float32)


def rollout_batch(
    env_id: str,
    policy: Policy,
    seeds: Sequence[int],
    variant: Mapping[str, float] | None = None,
    *,
    record: bool = False,
) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """Run one episode per seed, all in lock-step; returns (returns, per-episode records).

    With `record`, each record holds ``obs`` (T+1, obs_dim), ``actions`` (T, act_dim),
    ``rewards`` (T,).
    """
    batch = EnvBatch(env_id, len(seeds), variant)
    try:
        obs = batch.reset(seeds)
        reset = getattr(policy, "reset", None)
        if callable(reset):
            reset(len(seeds))
        returns = np.zeros(len(seeds))
        obs_log, act_log, rew_log, alive_log = [obs], [], [], []
        while batch.active.any():
            alive = batch.active.copy()
            actions = np.asarray(policy.act(obs), dtype=np.float32)
            obs, rewards, _ = batch.step(actions)
            returns += rewards
            if record:
                obs_log.append(obs)
                act_log.append(actions)
                rew_log.append(rewards)
                alive_log.append(alive)
        records: list[dict[str, np.ndarray]] = []
        if record:
            alive_arr = np.array(alive_log)  # (T, n): was copy i running at step t
            for i in range(len(seeds)):
                t = int(alive_arr[:, i].sum())
                records.append(
                    {
                        "obs": np.array([o[i] for o in obs_log[: t + 1]], dtype=np.float32),
                        "actions": np.array([a[i] for a in act_log[:t]], dtype=np.float32),
                        "rewards": np.array([r[i] for r in rew_log[:t]], dtype=np.float32),
                    }
                )
        return returns, records
    finally:
        batch.close()


def episode_returns(
    env_id: str,
    policy: Policy,
    seeds: Sequence[int],
    variant: Mapping[str, float] | None = None,
) -> np.ndarray:
    """Undiscounted return of one episode per seed (same order as `seeds`)."""
    returns, _ = rollout_batch(env_id, policy, seeds, variant)
    return returns
