"""Whether an update may switch now: the robot's update locks and the maintenance windows.

An update is downloaded, verified, staged and shadowed whenever it arrives; only the
switch waits. :class:`SwitchHold` answers, with the robot's own clock, whether the
switch must wait and why (:class:`Hold`: ``UPDATE_LOCKED`` with the locks' reasons,
or ``OUTSIDE_WINDOW`` with the next opening), and waits for that to change: it polls
the lock directory every ``poll_s`` and wakes at the window's opening.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fleet.update_lock import UpdateLocks
from protos.lifecycle import Reason
from runtime.maintenance_window import MaintenanceWindow, next_opening

__all__ = ["Hold", "SwitchHold"]


@dataclass(frozen=True)
class Hold:
    """Why the switch waits, and the latest moment (epoch s) to look again."""

    reason: Reason
    detail: str
    recheck_at: float


def _utc(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class SwitchHold:
    """The hold check the update runner asks before each switch."""

    def __init__(
        self,
        locks: UpdateLocks,
        *,
        poll_s: float = 0.5,
        clock: Callable[[], float] = time.time,
        stop: threading.Event | None = None,
    ) -> None:
        self.locks = locks
        self.poll_s = poll_s
        self.clock = clock
        self.stop = stop or threading.Event()

    def check(self, windows: Sequence[MaintenanceWindow]) -> Hold | None:
        """None when the switch may happen now."""
        now = self.clock()
        state = self.locks.read()
        if state.held:
            until = state.until() or now
            return Hold(Reason.UPDATE_LOCKED, state.describe(), min(until, now + self.poll_s))
        if not windows:
            return None
        at = dt.datetime.fromtimestamp(now, dt.UTC)
        opens = next_opening(windows, at)
        names = ", ".join(w.name for w in windows)
        if opens == at:
            return None
        if opens is None:
            return Hold(
                Reason.OUTSIDE_WINDOW,
                f"maintenance windows {names} are never open together; the switch waits "
                "until the plane changes them",
                now + 60.0,
            )
        label = "window" if len(windows) == 1 else "windows"
        return Hold(
            Reason.OUTSIDE_WINDOW,
            f"outside maintenance {label} {names}; next opening {_utc(opens)}",
            # Locks are polled while waiting for the window too.
            min(opens.timestamp(), now + self.poll_s),
        )

    def wait(self, hold: Hold) -> bool:
        """Sleep until `hold` should be looked at again; False once stopped."""
        delay = max(0.0, min(hold.recheck_at - self.clock(), self.poll_s))
        return not self.stop.wait(delay)
