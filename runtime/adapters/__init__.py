"""Robot I/O adapters: how the control loop reads observations and writes actions.

An adapter is any object with the `RobotAdapter` methods. Adapters are found by
name through the ``edgeflux.adapters`` entry-point group (so an integrator's package
can add one without touching EdgeFlux); the built-in ones (`gym`, `udp`, `null`)
are also known directly, so they work from a source checkout whose entry points
are not installed. Adapters raise only `AdapterError` / `AdapterTimeout`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = [
    "BUILTIN_ADAPTERS",
    "AdapterError",
    "AdapterTimeout",
    "RobotAdapter",
    "adapter_names",
    "load_adapter",
]

ENTRY_POINT_GROUP = "edgeflux.adapters"

BUILTIN_ADAPTERS: dict[str, str] = {
    "gym": "runtime.adapters.gym:GymAdapter",
    "udp": "runtime.adapters.udp:UdpAdapter",
    "null": "runtime.adapters.null:NullAdapter",
    "ros2": "runtime.adapters.ros2:Ros2Adapter",
}


class AdapterError(RuntimeError):
    """The robot could not be read or written; the message says which and why."""


class AdapterTimeout(AdapterError):
    """No observation arrived within the adapter's time-out."""


@runtime_checkable
class RobotAdapter(Protocol):
    """The robot, as the control loop sees it.

    `read_observation` returns a float32 vector and may block at most its own
    time-out; `write_action` may be called from the loop thread and (when the loop
    stalls) from the watchdog thread, never concurrently; `is_safe_to_switch` is the
    integrator's gate for a policy swap (e.g. False while moving fast or e-stopped).
    """

    def read_observation(self) -> npt.NDArray[np.float32]: ...

    def write_action(self, action: npt.NDArray[np.float32]) -> None: ...

    def is_safe_to_switch(self) -> bool: ...

    def close(self) -> None: ...


def _entry_points() -> dict[str, str]:
    found = dict(BUILTIN_ADAPTERS)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.value
    return found


def adapter_names() -> list[str]:
    return sorted(_entry_points())


def load_adapter(name: str, options: Mapping[str, Any] | None = None) -> RobotAdapter:
    """Instantiate the adapter registered as `name` with keyword `options`."""
    targets = _entry_points()
    target = targets.get(name)
    if target is None:
        raise AdapterError(
            f"no robot adapter named {name!r}; known: {', '.join(sorted(targets))} "
            f"(add one through the {ENTRY_POINT_GROUP!r} entry-point group)"
        )
    module_name, _, attr = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise AdapterError(f"adapter {name!r} ({target}) could not be imported: {exc}") from exc
    try:
        adapter = factory(**dict(options or {}))
    except TypeError as exc:
        raise AdapterError(f"adapter {name!r}: bad options {dict(options or {})}: {exc}") from exc
    if not isinstance(adapter, RobotAdapter):
        raise AdapterError(f"adapter {name!r} ({target}) lacks the RobotAdapter methods")
    return adapter
