"""What a parity campaign measures, declared before anything runs: the TOML definition,
its seeds, and the training seeds a bundle's provenance records. Pure code."""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from distill.seeds import ATTESTATION, TRAINING

__all__ = [
    "PROTOCOL_VERSION",
    "REFERENCE_RETURNS",
    "TERMINATING_ENVS",
    "TRAINING_SEED_FIELDS",
    "CampaignError",
    "CampaignSpec",
    "TaskSpec",
    "load_campaign",
    "parse_campaign",
    "training_seeds",
]

PROTOCOL_VERSION = "edgeflux.parity/v1"
# Known-good returns on Pendulum-v1: oracle MPPI ≈ −155, SAC ≈ −157.
# The teacher must close at least `min_teacher_gain` of the gap random → reference.
REFERENCE_RETURNS = {"Pendulum-v1": -150.0}
# Environments whose episodes may end before max_episode_steps (then the length gate
# accepts 1..max). Pendulum, Reacher and HalfCheetah only truncate: every episode of
# both arms must run exactly max_episode_steps.
TERMINATING_ENVS: frozenset[str] = frozenset()


class CampaignError(RuntimeError):
    """The campaign cannot run: bad definition, unverifiable bundle, or a foreign workdir."""


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    env_id: str = "Pendulum-v1"
    variant: dict[str, float] = Field(default_factory=dict)
    """Physical parameters changed for this task (Pendulum: g, m, l)."""
    episodes: int = Field(default=100, ge=2, le=100_000)
    """Paired episodes (one seed each, both arms)."""
    seed_start: int | None = Field(default=None, ge=0)
    """First evaluation seed (default: derived from the task index, far from training)."""
    calibration_episodes: int = Field(default=30, ge=2, le=10_000)
    margin: tuple[float, float] | None = None
    """Fixed margin (low, high) in return units; default: ±margin_fraction of teacher − random."""
    margin_fraction: float = Field(default=0.05, gt=0, lt=1)
    reference_return: float | None = None
    """Known good return; default from REFERENCE_RETURNS for the env."""

    @field_validator("seed_start")
    @classmethod
    def _seed_start(cls, v: int | None) -> int | None:
        if v is not None and v in TRAINING:
            raise ValueError(
                f"seed_start {v} lies in the training seed range [{TRAINING.start}, "
                f"{TRAINING.stop}); choose {TRAINING.stop} or more"
            )
        return v

    @field_validator("margin")
    @classmethod
    def _margin(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] < 0 < v[1]:
            raise ValueError(f"margin {list(v)} must be [low, high] with low < 0 < high")
        return v


class CampaignSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    min_pairs: int = Field(default=30, ge=2)
    min_teacher_gain: float = Field(default=0.5, ge=0, le=1)
    validity_days: float = Field(default=30.0, gt=0)
    teacher: str = "bundle"
    """"bundle" (the teacher the bundle's provenance names and digests), "oracle-mppi",
    or "module:factory" with factory(env_id, variant) -> Teacher."""
    teacher_search: list[str] = Field(default_factory=list)
    """Directories searched (besides the bundle's own and parent directory) for the
    world-model checkpoint of a bundle's teacher, found by digest."""
    workers: int = Field(default=2, ge=1, le=64)
    chunk: int = Field(default=50, ge=1)
    """Episodes per work unit (one lock-step batch per arm)."""
    parity_inputs: int = Field(default=2048, ge=16)
    """Random observations for numeric parity across execution providers."""
    tasks: list[TaskSpec] = Field(min_length=1)

    @field_validator("tasks")
    @classmethod
    def _unique(cls, v: list[TaskSpec]) -> list[TaskSpec]:
        names = [t.name for t in v]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        return v

    def digest(self) -> str:
        """Identity of what is measured; `workers` changes only speed, so it is left out
        (a run may be resumed with another `--workers`)."""
        body = self.model_dump(mode="json", exclude={"workers"})
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def parse_campaign(text: str, source: str = "campaign") -> CampaignSpec:
    """Parse a campaign TOML document (`[campaign]` plus `[[task]]` tables)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CampaignError(f"{source}: not valid TOML ({exc})") from exc
    unknown = set(doc) - {"campaign", "task"}
    if unknown:
        raise CampaignError(f"{source}: unknown top-level tables {sorted(unknown)}")
    campaign, tasks = doc.get("campaign", {}), doc.get("task", [])
    if not isinstance(campaign, dict):
        raise CampaignError(f"{source}: [campaign] must be a table, not {type(campaign).__name__}")
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise CampaignError(f"{source}: [[task]] must be tables (one [[task]] per task)")
    body = dict(campaign)
    body["tasks"] = tasks
    try:
        return CampaignSpec.model_validate(body)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise CampaignError(f"{source}: {details}") from None


def load_campaign(path: str | os.PathLike[str]) -> CampaignSpec:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise CampaignError(f"{p}: cannot read the campaign definition ({exc})") from exc
    return parse_campaign(text, str(p))


def sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def campaign_seeds(spec: CampaignSpec, index: int) -> tuple[list[int], list[int]]:
    """Evaluation and calibration seeds of task `index`.

    Defaults sit in `distill.seeds.ATTESTATION` and a declared `seed_start` may not lie
    in `TRAINING` (where DAgger and world-model training draw theirs): disjoint by
    construction, and the gate checks the bundle's recorded seeds anyway.
    """
    task = spec.tasks[index]
    default = ATTESTATION.start + index * 1_000_000
    start = task.seed_start if task.seed_start is not None else default
    evaluation = list(range(start, start + task.episodes))
    cal_start = ATTESTATION.start + 90_000_000 + index * 100_000
    calibration = [s for s in range(cal_start, cal_start + task.calibration_episodes * 2)]
    calibration = [s for s in calibration if s not in set(evaluation)][: task.calibration_episodes]
    return evaluation, calibration


# Provenance fields (besides `seeds`) that may list environment seeds used in training;
# the manifest keeps unknown fields, so a trainer can record them without a schema change.
TRAINING_SEED_FIELDS = (
    "seeds",
    "dagger_seeds",
    "world_model_seeds",
    "training_seeds",
    "env_seeds",
)


def training_seeds(provenance: Any) -> frozenset[int] | None:
    """Every seed the bundle's provenance says was used for training or DAgger; None
    when it records none (a bring-your-own bundle: disjointness is then unknown)."""
    extra = getattr(provenance, "model_extra", None) or {}
    found: set[int] = set()
    for name in TRAINING_SEED_FIELDS:
        values = getattr(provenance, name, None) if name == "seeds" else extra.get(name)
        if isinstance(values, list):
            found.update(int(v) for v in values if isinstance(v, int) and not isinstance(v, bool))
    return frozenset(found) if found else None
