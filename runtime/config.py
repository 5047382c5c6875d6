"""Typed configuration: one pydantic model per component, loaded in one place.

Sources, lowest precedence first: the model's defaults, a TOML file (one table per
component, e.g. ``[runtime]``), ``EDGEFLUX_<SECTION>_<FIELD>`` environment
variables (nested fields joined with ``__``), then values given on the command
line. A bad value raises :class:`ConfigError` naming the field, the value and the
source it came from::

    runtime.rate_hz = 'fast' (from environment EDGEFLUX_RUNTIME_RATE_HZ):
    Input should be a valid number

Component models should set ``model_config = ConfigDict(extra="forbid")`` so that
a typo in a TOML key is an error rather than a silently ignored setting.

The runtime's own model, :class:`RuntimeConfig`, lives here too, so that the tools
that write a robot's configuration (``edgeflux flash``) validate it without
loading the control loop or onnxruntime.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.layout import RobotLayout

__all__ = ["ConfigError", "RuntimeConfig", "load_config", "load_runtime_config"]

M = TypeVar("M", bound=BaseModel)
ENV_PREFIX = "EDGEFLUX_"


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message says which and where from."""


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, (*prefix, key)))
        out[(*prefix, key)] = value
    return out


def load_config(
    model: type[M],
    section: str,
    *,
    toml_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> M:
    """Build `model` from defaults < TOML `[section]` < environment < `overrides`.

    `overrides` are CLI flag values keyed by (dotted) field name; ``None`` values
    mean "flag not given" and are skipped.
    """
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    sources: dict[tuple[str, ...], str] = {}

    if toml_path is not None:
        path = Path(toml_path)
        try:
            with path.open("rb") as fh:
                doc = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        table = doc.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table, got {type(table).__name__}")
        for key_path, value in _flatten(table).items():
            if not isinstance(value, Mapping):
                _set_path(merged, key_path, value)
            sources[key_path] = f"{path} [{section}]"

    env_prefix = f"{ENV_PREFIX}{section.upper()}_"
    for name, raw in env.items():
        if not name.startswith(env_prefix):
            continue
        key_path = tuple(part.lower() for part in name[len(env_prefix) :].split("__"))
        _set_path(merged, key_path, raw)
        sources[key_path] = f"environment {name}"

    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        key_path = tuple(dotted.split("."))
        _set_path(merged, key_path, value)
        sources[key_path] = f"command line --{dotted.replace('_', '-').replace('.', '-')}"

    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, section, merged, sources)) from None


def _describe(
    exc: ValidationError,
    section: str,
    merged: Mapping[str, Any],
    sources: Mapping[tuple[str, ...], str],
) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        source = "default"
        for n in range(len(loc), 0, -1):
            if loc[:n] in sources:
                source = sources[loc[:n]]
                break
        value: Any = merged
        for part in loc:
            value = value.get(part, "<missing>") if isinstance(value, Mapping) else "<missing>"
        field = ".".join((section, *loc))
        if err["type"] == "missing":
            lines.append(f"{field} is required but was not set (set it in [{section}] or env)")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{field} = {value!r} (from {source}): unknown setting")
        else:
            lines.append(f"{field} = {value!r} (from {source}): {err['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


class RecordingConfig(BaseModel):
    """`[runtime.recording]`: the flight recorder (`runtime.recording`)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    """Record every tick into MCAP segments under <root>/var/lib/edgeflux/recordings."""
    quota_mb: float = Field(default=1024.0, gt=0)
    """Disk quota of the recordings directory; the oldest segments go first."""
    segment_s: float = Field(default=10.0, gt=0, le=3600)
    """Length of one segment file."""
    keep_before_s: float = Field(default=5.0, ge=0)
    """Around an intervention or fault, keep (delete last) what precedes it by this much..."""
    keep_after_s: float = Field(default=5.0, ge=0)
    """...and what follows it by this much."""


class RuntimeConfig(BaseModel):
    """`[runtime]` in `<root>/etc/edgeflux/runtime.toml` (env: EDGEFLUX_RUNTIME_<FIELD>)."""

    model_config = ConfigDict(extra="forbid")

    adapter: str = "gym"
    """Robot I/O adapter name (entry-point group `edgeflux.adapters`): gym, udp, null, ..."""
    adapter_options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the adapter, e.g. {env = "Pendulum-v1", seed = 0}."""
    rate_hz: float | None = Field(default=None, gt=0, le=10_000)
    """Override the manifest's control rate (Hz)."""
    providers: list[str] | None = None
    """Restrict execution providers further than the manifest does."""
    intra_op_threads: int = Field(default=1, ge=1)
    fp16: bool = False
    """TensorRT FP16 engines (ignored on CUDA/CPU)."""
    engine_cache_dir: Path | None = None
    """TensorRT engine cache; default <root>/var/lib/edgeflux/engine-cache (never in a slot)."""
    warmup_runs: int = Field(default=20, ge=0)
    boot_tries: int = Field(default=3, ge=1)
    """Start-up tries of an activated, uncommitted slot before falling back to the last good one."""
    health_max_fallback_rate: float = Field(default=0.02, ge=0, le=1)
    """Health window fails when more than this fraction of ticks got the fallback action."""
    health_max_miss_rate: float = Field(default=0.05, ge=0, le=1)
    """Health window fails when more than this fraction of tick slots missed their deadline."""
    watchdog: bool = True
    spin_us: float = Field(default=0.0, ge=0)
    """Busy-wait this long before each tick for lower jitter (costs CPU)."""
    swap_timeout_s: float = Field(default=5.0, gt=0)
    realtime_priority: int | None = Field(default=None, ge=1, le=99)
    """Run the loop thread SCHED_FIFO at this priority (needs CAP_SYS_NICE or an rtprio limit);
    None: normal. The flashed systemd unit sets 50."""
    lock_memory: bool = False
    """Lock the process's memory (mlockall) so a page fault never stalls a tick (needs
    CAP_IPC_LOCK or LimitMEMLOCK=infinity). The flashed systemd unit turns it on."""
    loop_cpus: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1)
    """Pin the loop thread to these CPUs (e.g. [3] on a core kept free with isolcpus=3)."""
    recording: RecordingConfig = Field(default_factory=RecordingConfig)
    gil_switch_interval_ms: float = Field(default=0.5, gt=0)
    """How long another Python thread (staging, gRPC) may hold the GIL while the loop waits;
    CPython's default 5 ms is longer than a 500 Hz period."""


def load_runtime_config(
    layout: RobotLayout, overrides: dict[str, Any] | None = None
) -> RuntimeConfig:
    toml = layout.runtime_config if layout.runtime_config.is_file() else None
    return load_config(RuntimeConfig, "runtime", toml_path=toml, overrides=overrides)
