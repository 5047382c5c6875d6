"""What the runtime reports about itself, the error of a control request it refuses, and
the requests its control socket forwards (`Controllable`, which
`runtime.service.RuntimeService` implements), so that `runtime.control_server` need
not import the service."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from protos.lifecycle import Failure, Reason, RuntimeState
from runtime.loop import ControlLoop, LoadedPolicy, ShadowResult
from runtime.metrics import MetricsSnapshot
from runtime.slots import SlotState

__all__ = ["ControlError", "Controllable", "StatusInfo", "empty_metrics"]


class ControlError(RuntimeError):
    """A control request cannot be done now; the message says why and what to do,
    `reason` is the code the agent reports (default: the request does not fit the state)."""

    def __init__(self, detail: str, reason: Reason = Reason.WRONG_STATE) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class StatusInfo:
    state: RuntimeState
    active: LoadedPolicy | None
    pending: LoadedPolicy | None
    last_good: LoadedPolicy | None
    slots: SlotState
    provider: str
    metrics: MetricsSnapshot
    anti_rollback: dict[str, int]
    failure: Failure | None
    """Why the last candidate failed or was rolled back (None: nothing failed)."""
    swaps: int
    scheduling: str = ""
    """How the loop thread is scheduled, e.g. 'SCHED_FIFO 50, memory locked'."""
    realtime: bool = False
    engine_check: str = ""
    """The active GPU session's check against CPU FP32 (or why it fell back); '' on CPU."""


def empty_metrics() -> MetricsSnapshot:
    return MetricsSnapshot(0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, {})


class Controllable(Protocol):
    """The requests `RuntimeControl` forwards to the runtime."""

    @property
    def loop(self) -> ControlLoop | None: ...

    def status(self) -> StatusInfo: ...

    def stage(self, bundle_dir: Path) -> tuple[LoadedPolicy, float]: ...

    def shadow(self, ticks: int) -> tuple[LoadedPolicy, ShadowResult]: ...

    def activate(self, health_window_ticks: int = 0) -> StatusInfo: ...

    def health_window(self, ticks: int) -> StatusInfo: ...

    def commit(self) -> StatusInfo: ...

    def rollback(self, failure: Failure | None = None) -> StatusInfo: ...
