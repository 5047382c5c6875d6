"""What a world-model family provides, so training, planning, saving and distillation
treat every family alike.

A *model* is a `TrainableWorldModel`: the planning surface of `distill.teachers.
WorldModel` (encode, latent dynamics, reward, value, policy prior, digest) plus what
training and the saved-model directory need (a training step, a JSON config, a
state dict, a seeded generator). A *family* builds models from a JSON config; the
registry (`distill.wm_registry`) finds families by name, including ones other
packages declare in the ``edgeflux.world_models`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import torch

from distill.teachers import WorldModel

__all__ = ["GradReducer", "TrainableWorldModel", "WorldModelFamily"]

# Averages gradients across data-parallel processes before each optimiser step.
GradReducer = Callable[[list[torch.nn.Parameter]], None]


@runtime_checkable
class TrainableWorldModel(WorldModel, Protocol):
    """A world model that trains on replayed windows and saves as config + tensors.

    `train_step` takes obs (H+1, B, obs_dim), actions (H, B, action_dim) in [-1, 1]
    and rewards (H, B), takes one optimiser step (the model owns its optimisers) and
    returns scalar statistics; it should report ``total_loss``. `config_dict` is
    plain JSON that the family's `build` turns back into an identical architecture.
    """

    family: str
    obs_dim: int

    @property
    def device(self) -> torch.device: ...

    def config_dict(self) -> dict[str, Any]: ...

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state_dict: Any, strict: bool = True) -> Any: ...

    def set_generator(self, gen: torch.Generator) -> None: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...

    def eval(self) -> Any: ...

    def train_step(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        reduce_grads: GradReducer | None = None,
    ) -> dict[str, float]: ...


@runtime_checkable
class WorldModelFamily(Protocol):
    """Builds a family's models. `default_config(preset)` gives a JSON config for a
    named size (raise ValueError for an unknown one); the trainer adds ``discount``
    and `horizon`/`batch_size` are read from it when present."""

    name: str

    def default_config(self, preset: str) -> dict[str, Any]: ...

    def build(
        self, obs_dim: int, action_dim: int, config: Mapping[str, Any]
    ) -> TrainableWorldModel: ...
