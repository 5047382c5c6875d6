"""Real-time scheduling for the control loop: ask for it, then report what was had.

Linux schedules threads individually, so the loop thread asks for SCHED_FIFO itself
(`enter_loop_thread`), optionally pins itself to CPUs, and reads back what the kernel
actually gave it. `lock_memory` locks the whole process's pages (current and future)
so a page fault never stalls a tick. Each step logs and carries on where it is not
permitted: a robot without the privilege still runs, and says so (`Scheduling`,
in status and telemetry).

What a process needs: SCHED_FIFO needs CAP_SYS_NICE or an RLIMIT_RTPRIO at least as
high as the priority (systemd: ``LimitRTPRIO=``); locking memory needs CAP_IPC_LOCK
or a high enough RLIMIT_MEMLOCK (``LimitMEMLOCK=infinity``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Scheduling",
    "enter_loop_thread",
    "lock_memory",
    "thread_scheduling",
    "warn_unless_realtime",
]

log = logging.getLogger(__name__)

_POLICY_NAMES = {
    getattr(os, name): name
    for name in ("SCHED_OTHER", "SCHED_FIFO", "SCHED_RR", "SCHED_BATCH", "SCHED_IDLE")
    if hasattr(os, name)
}
_MCL_CURRENT, _MCL_FUTURE = 1, 2  # <sys/mman.h> on Linux
_memory_locked = False
_memory_refused = ""

HOW_TO_GRANT = (
    "grant CAP_SYS_NICE or LimitRTPRIO= (systemd) / an rtprio limit (limits.conf) "
    "and set realtime_priority in [runtime]"
)


@dataclass(frozen=True)
class Scheduling:
    """How a thread is scheduled, and why real-time was not had when it was asked for."""

    policy: str
    priority: int
    cpus: tuple[int, ...]
    memory_locked: bool
    refused: str = ""
    """Why real-time priority, pinning or locking was asked for and not granted ('' if not)."""

    @property
    def realtime(self) -> bool:
        return self.policy in ("SCHED_FIFO", "SCHED_RR")

    def describe(self) -> str:
        """One line for status and telemetry, e.g. 'SCHED_FIFO 50, memory locked, CPUs 1'."""
        head = f"{self.policy} {self.priority}" if self.realtime else self.policy
        parts = [head, "memory locked" if self.memory_locked else "memory not locked"]
        if self.cpus:
            parts.append("CPUs " + ",".join(map(str, self.cpus)))
        text = ", ".join(parts)
        return f"{text} ({self.refused})" if self.refused else text


def thread_scheduling(refused: str = "") -> Scheduling:
    """The calling thread's scheduling as the kernel reports it."""
    refused = "; ".join(r for r in (refused, _memory_refused) if r)
    try:
        policy = os.sched_getscheduler(0)
        priority = os.sched_getparam(0).sched_priority
    except (AttributeError, OSError):  # not Linux
        return Scheduling("unknown", 0, (), _memory_locked, refused)
    try:
        cpus = tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cpus = ()
    all_cpus = os.cpu_count() or 0
    if len(cpus) == all_cpus:
        cpus = ()  # not pinned
    name = _POLICY_NAMES.get(policy, f"policy {policy}")
    return Scheduling(name, priority, cpus, _memory_locked, refused)


def enter_loop_thread(priority: int | None, cpus: Sequence[int] | None = None) -> Scheduling:
    """Put the calling thread on SCHED_FIFO at `priority` (None: leave it) and pin it to
    `cpus` (None: leave it); returns what was had, with the reasons for what was not."""
    refused: list[str] = []
    if cpus:
        try:
            os.sched_setaffinity(0, set(cpus))
        except (AttributeError, OSError, ValueError) as exc:
            refused.append(f"cannot pin the loop to CPUs {list(cpus)}: {exc}")
    if priority is not None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        except (AttributeError, OSError) as exc:  # not Linux, or no CAP_SYS_NICE / rtprio
            refused.append(f"real-time priority {priority} refused: {exc}")
    for why in refused:
        log.warning("control loop: %s", why)
    return thread_scheduling("; ".join(refused))


def warn_unless_realtime(got: Scheduling) -> None:
    """The runtime's start-up warning for a loop without real-time priority."""
    if not got.realtime:
        log.warning(
            "the control loop runs without real-time priority (%s): ticks can be late "
            "whenever other work shares its CPU; %s",
            got.describe(),
            HOW_TO_GRANT,
        )


def lock_memory() -> str:
    """mlockall(MCL_CURRENT | MCL_FUTURE) for the process; '' on success, else why not."""
    global _memory_locked, _memory_refused
    if _memory_locked:
        return ""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6", use_errno=True)
        rc = libc.mlockall(_MCL_CURRENT | _MCL_FUTURE)
    except (OSError, AttributeError) as exc:
        why = f"cannot lock memory: {exc}"
    else:
        if rc == 0:
            _memory_locked, _memory_refused = True, ""
            return ""
        err = ctypes.get_errno()
        why = (
            f"cannot lock memory: {os.strerror(err)} (grant CAP_IPC_LOCK or LimitMEMLOCK=infinity)"
        )
    log.warning("%s; page faults can stall the control loop", why)
    _memory_refused = why
    return why
