"""The runtime manifest `edgeflux.json` of a bundle (schema ``edgeflux.bundle/v1``).

The manifest says what the policy is (name, semver version, anti-rollback
``sequence``), how to feed it (I/O spec, bounds, normalisation), how to run it
(control rate, deadline, fallback), where it may run (compatibility) and where it
came from (provenance). Unknown fields are kept on a round trip, so an older
runtime can carry a newer manifest's additions (forward compatibility).
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "SCHEMA",
    "BundleManifest",
    "Compatibility",
    "ControlSpec",
    "IOSpec",
    "ManifestError",
    "Provenance",
    "TensorSpec",
    "load_manifest",
    "parse_manifest",
]

SCHEMA = "edgeflux.bundle/v1"
MANIFEST_NAME = "edgeflux.json"

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class ManifestError(ValueError):
    """`edgeflux.json` is missing, not JSON, or does not match the schema."""


class _Open(BaseModel):
    """Keeps unknown fields (forward compatible) and is immutable once parsed."""

    model_config = ConfigDict(extra="allow", frozen=True)


class TensorSpec(_Open):
    """One graph input or output. `shape` uses -1 (or a name) for a dynamic dimension."""

    name: str
    shape: list[int | str]
    dtype: Literal["float32", "float16", "float64", "int64", "int32", "bool"] = "float32"


class IOSpec(_Open):
    """How observations go in and actions come out.

    Bounds are per element of the observation / action vector; `obs_mean`/`obs_std`
    are set only when normalisation is *not* inside the graph.
    """

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    obs_low: list[float]
    obs_high: list[float]
    action_low: list[float]
    action_high: list[float]
    obs_mean: list[float] | None = None
    obs_std: list[float] | None = None

    @model_validator(mode="after")
    def _check_bounds(self) -> IOSpec:
        if not self.inputs or not self.outputs:
            raise ValueError("io.inputs and io.outputs must each name at least one tensor")
        for lo_name, hi_name in (("obs_low", "obs_high"), ("action_low", "action_high")):
            lo, hi = getattr(self, lo_name), getattr(self, hi_name)
            if len(lo) != len(hi):
                raise ValueError(f"io.{lo_name} has {len(lo)} values, io.{hi_name} {len(hi)}")
            bad = [i for i, (a, b) in enumerate(zip(lo, hi, strict=True)) if not a <= b]
            if bad:
                raise ValueError(f"io.{lo_name} > io.{hi_name} at index {bad[0]}")
        for name in ("obs_mean", "obs_std"):
            values = getattr(self, name)
            if values is not None and len(values) != len(self.obs_low):
                raise ValueError(f"io.{name} must have {len(self.obs_low)} values")
            if values is not None and not all(math.isfinite(v) for v in values):
                raise ValueError(f"io.{name} values must be finite numbers")
        if (self.obs_mean is None) != (self.obs_std is None):
            raise ValueError("io.obs_mean and io.obs_std go together (give both or neither)")
        if self.obs_std is not None and any(s <= 0 for s in self.obs_std):
            raise ValueError("io.obs_std values must be > 0")
        return self

    @property
    def obs_dim(self) -> int:
        return len(self.obs_low)

    @property
    def action_dim(self) -> int:
        return len(self.action_low)


class ControlSpec(_Open):
    """How the control loop runs this policy."""

    rate_hz: float = Field(gt=0, le=10_000)
    deadline_ms: float = Field(gt=0)
    fallback: Literal["hold", "zero", "safe"] = "hold"
    safe_action: list[float] | None = None
    max_action_delta: float | None = Field(default=None, gt=0)
    """Largest change of any action element from one tick to the next (None: unlimited)."""
    obs_margin: float = Field(default=0.05, ge=0)
    """Tolerance outside the declared observation bounds, as a fraction of the range."""

    @model_validator(mode="after")
    def _check(self) -> ControlSpec:
        if self.fallback == "safe" and not self.safe_action:
            raise ValueError("control.fallback 'safe' needs control.safe_action")
        if self.deadline_ms > 1000.0 / self.rate_hz:
            raise ValueError(
                f"control.deadline_ms {self.deadline_ms} exceeds the period "
                f"{1000.0 / self.rate_hz:.3f} ms of rate_hz {self.rate_hz}"
            )
        return self


class Compatibility(_Open):
    min_runtime_version: str = "0.1.0"
    opset: int = Field(default=17, ge=1)
    execution_providers: list[str] = Field(
        default_factory=lambda: [
            "TensorrtExecutionProvider",
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        ]
    )
    hardware_tags: list[str] = Field(default_factory=list)
    """Every tag here must be present on the device (e.g. "arm64", "jetson-orin")."""
    accelerated_tolerance: float = Field(default=0.01, gt=0)
    """Largest |action difference| allowed between a TensorRT/CUDA session (FP16 or not)
    and the CPU FP32 session on the calibration observations (`runtime.engine_check`)."""


class Provenance(_Open):
    teacher_digest: str = ""
    dataset_digest: str = ""
    trainer_version: str = ""
    env_id: str = ""
    seeds: list[int] = Field(default_factory=list)


class BundleManifest(_Open):
    schema_: Literal["edgeflux.bundle/v1"] = Field("edgeflux.bundle/v1", alias="schema")
    name: str
    version: str
    sequence: int = Field(ge=0)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    io: IOSpec
    control: ControlSpec
    compatibility: Compatibility = Field(default_factory=Compatibility)
    provenance: Provenance = Field(default_factory=Provenance)

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("name must be 1-64 chars of a-z 0-9 . _ - starting alphanumeric")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not _SEMVER.match(v):
            raise ValueError(f"version {v!r} is not semver (MAJOR.MINOR.PATCH)")
        return v

    def to_json(self) -> str:
        """Canonical text for `edgeflux.json` (sorted keys, unknown fields included)."""
        data = self.model_dump(mode="json", by_alias=True)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def parse_manifest(raw: bytes | str, source: str = MANIFEST_NAME) -> BundleManifest:
    """Parse and validate manifest bytes; errors name `source` and the field."""
    try:
        data: Any = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{source}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: expected a JSON object, got {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise ManifestError(
            f"{source}: schema is {data.get('schema')!r}; this runtime reads {SCHEMA!r}"
        )
    try:
        return BundleManifest.model_validate(data)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ManifestError(f"{source}: {details}") from None


def load_manifest(bundle_dir: str | Path) -> BundleManifest:
    path = Path(bundle_dir) / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{path}: missing") from None
    return parse_manifest(raw, str(path))
