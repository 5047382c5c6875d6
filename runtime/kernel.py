"""The policy kernel: one verified bundle's policy from observation to action.

This is the arithmetic of the control loop's tick, and the only place it lives:

1. check the observation (type, shape, dtype, finite, inside the declared bounds
   plus margin); a failed check means the fallback action;
2. normalise it as the manifest declares (``io.obs_mean`` / ``io.obs_std``, when the
   normaliser is not inside the graph);
3. run the graph on one observation (`PolicySession.step`); an exception means the
   fallback action;
4. check the action (size, finite), clamp it to the action bounds, limit its change
   from the previous action to ``control.max_action_delta``; an unusable action
   means the fallback action (hold / zero / safe);
5. remember the action as the episode's previous action.

Every intervention is counted by reason (`runtime.envelope.Reason`) in `counts`.

The control loop, its shadow runs, the parity campaign's arms, ``distill eval``, the
router's policy worker and the benches all call this module, so what is measured and
attested is what the robot actuates. `KernelPolicy` steps a batch of independent
episodes one observation at a time through one kernel (a graph with a fixed batch
dimension of 1 works too)::

    kernel = load_kernel(bundle_dir / "policy.onnx", load_manifest(bundle_dir))
    action = kernel.step(obs)          # one tick
    kernel.reset()                     # a new episode
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from runtime.envelope import Reason, SafetyEnvelope
from runtime.manifest import BundleManifest

__all__ = [
    "KERNEL_VERSION",
    "KernelError",
    "KernelPolicy",
    "PolicyKernel",
    "Session",
    "kernel_settings",
    "load_kernel",
    "settings_digest",
]

F32 = npt.NDArray[np.float32]
KERNEL_VERSION = "edgeflux.kernel/v1"
"""Names the arithmetic above; part of `settings_digest`."""


class KernelError(ValueError):
    """A kernel cannot be built for this graph and manifest (one-line reason)."""


class Session(Protocol):
    """What the kernel needs from an inference session (`runtime.session.PolicySession`)."""

    @property
    def provider(self) -> str: ...

    def step(self, obs: F32) -> F32: ...


def kernel_settings(manifest: BundleManifest) -> dict[str, Any]:
    """Everything in the manifest that changes an action besides the graph itself."""
    io, ctl = manifest.io, manifest.control
    return {
        "kernel": KERNEL_VERSION,
        "obs_low": list(io.obs_low),
        "obs_high": list(io.obs_high),
        "obs_margin": ctl.obs_margin,
        "obs_mean": None if io.obs_mean is None else list(io.obs_mean),
        "obs_std": None if io.obs_std is None else list(io.obs_std),
        "action_low": list(io.action_low),
        "action_high": list(io.action_high),
        "max_action_delta": ctl.max_action_delta,
        "fallback": ctl.fallback,
        "safe_action": None if ctl.safe_action is None else list(ctl.safe_action),
    }


def settings_digest(manifest: BundleManifest) -> str:
    """sha256 of `kernel_settings` (canonical JSON): the envelope and normalisation applied."""
    text = json.dumps(kernel_settings(manifest), sort_keys=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


class PolicyKernel:
    """The tick's arithmetic for one manifest and one session (see the module docstring).

    `counts` may be shared (the loop's intervention counters). `propose` computes an
    action without remembering it (the loop may still replace it by the fallback when
    the deadline passed); `commit` makes it the previous action; `step` does both.
    """

    def __init__(
        self, manifest: BundleManifest, session: Session, counts: Counter[str] | None = None
    ) -> None:
        self.manifest = manifest
        self.session = session
        self.envelope = SafetyEnvelope(manifest.io, manifest.control, counts)
        self.counts: Counter[str] = self.envelope.counts
        self.action_dim = self.envelope.action_dim
        self.obs_dim = self.envelope.obs_dim
        self.prev: F32 = self.envelope.prev
        """The episode's previous action (the state the rate limit and "hold" use)."""
        self._out = np.zeros(self.action_dim, np.float32)
        io = manifest.io
        self._norm: tuple[F32, F32, F32] | None = None
        if io.obs_mean is not None and io.obs_std is not None:
            self._norm = (
                np.asarray(io.obs_mean, np.float32),
                (1.0 / np.asarray(io.obs_std, np.float64)).astype(np.float32),
                np.zeros(io.obs_dim, np.float32),
            )
        self.digest = settings_digest(manifest)

    @property
    def provider(self) -> str:
        return self.session.provider

    @property
    def initial_action(self) -> F32:
        return self.envelope.initial_action

    def reset(self) -> None:
        """A new episode: the previous action becomes the initial action again."""
        np.copyto(self.prev, self.envelope.initial_action)

    def count(self, reason: Reason) -> None:
        self.counts[reason.value] += 1

    def propose(self, obs: object, previous: F32 | None = None) -> F32:
        """The action for `obs` after the action `previous` (default: `prev`), not committed.

        The result may be the session's or the kernel's reused buffer: copy it (or
        `commit` it) before the next call.
        """
        prev = self.prev if previous is None else previous
        env = self.envelope
        if env.check_observation(obs) is not None:
            return env.fallback(prev)
        x: F32 = obs  # type: ignore[assignment]  # checked: a float32 vector
        if self._norm is not None:
            mean, inv_std, buf = self._norm
            np.subtract(x, mean, out=buf)
            x = np.multiply(buf, inv_std, out=buf)
        try:
            raw = self.session.step(x)
        except Exception:  # any failure of the graph is an intervention, not a crash
            self.counts[Reason.POLICY_ERROR.value] += 1
            return env.fallback(prev)
        action = env.filter_action(raw, prev, self._out)
        if action is None:
            return env.fallback(prev)
        return action

    def fallback(self, previous: F32 | None = None) -> F32:
        """The manifest's fallback action after `previous` (default: `prev`)."""
        return self.envelope.fallback(self.prev if previous is None else previous)

    def commit(self, action: F32) -> F32:
        """Make `action` the previous action; returns `prev` (the kernel's own copy)."""
        np.copyto(self.prev, action)
        return self.prev

    def step(self, obs: object) -> F32:
        """One tick: `propose` then `commit`; returns `prev` (valid until the next call)."""
        return self.commit(self.propose(obs))


class KernelPolicy:
    """Independent episodes in lock-step through one kernel: ``act(obs (n, d)) -> (n, m)``.

    Each row is one episode with its own previous action; rows are stepped one by
    one, exactly as the loop steps one observation per tick. Observations are cast to
    float32 the way the runtime's adapters do. `reset(n)` starts n new episodes.
    """

    def __init__(self, kernel: PolicyKernel) -> None:
        self.kernel = kernel
        self._prev = np.zeros((0, kernel.action_dim), np.float32)

    @property
    def counts(self) -> Counter[str]:
        return self.kernel.counts

    @property
    def provider(self) -> str:
        return self.kernel.provider

    def reset(self, n: int) -> None:
        self._prev = np.tile(self.kernel.initial_action, (n, 1)).astype(np.float32)

    def act(self, obs: npt.ArrayLike) -> F32:
        batch = np.asarray(obs)
        if batch.ndim != 2:
            raise KernelError(
                f"expected a batch of observations (n, {self.kernel.obs_dim}), "
                f"got shape {batch.shape}"
            )
        if len(self._prev) != len(batch):
            self.reset(len(batch))
        out = np.empty((len(batch), self.kernel.action_dim), np.float32)
        for i in range(len(batch)):
            row = np.asarray(batch[i], np.float32)
            action = self.kernel.propose(row, self._prev[i])
            self._prev[i] = action
            out[i] = action
        return out


def load_kernel(
    model: str | Path | bytes,
    manifest: BundleManifest,
    *,
    allowed_providers: Sequence[str] | None = None,
    counts: Counter[str] | None = None,
) -> PolicyKernel:
    """A kernel over a new `PolicySession` for `model`; KernelError when the graph's input
    or output size does not match the manifest, `SessionError` when it cannot load."""
    from runtime.session import PolicySession

    session = PolicySession(model, allowed_providers=allowed_providers)
    io = manifest.io
    if session.obs_size != io.obs_dim or session.action_size != io.action_dim:
        raise KernelError(
            f"the graph maps {session.obs_size} observation values to {session.action_size} "
            f"action values per step; the manifest declares {io.obs_dim} and {io.action_dim}"
        )
    return PolicyKernel(manifest, session, counts)
