"""Maintenance windows on the plane: the operator's commands and the desired state.

The operator's commands are in :mod:`cloud.windows_cli`:
``edgeflux cloud window set NAME --label k=v --days mon-fri --start 02:00 --end 04:00
--tz Europe/Berlin`` stores a window for the devices carrying those labels (``list``,
``remove``). When the plane signs a device's desired state it adds every window that
applies to that device to the bundle's gate (``gate.windows``), so the robot keeps to
them with its own clock, also while offline; a window changed on the plane reaches a
device with its next desired-state poll or refresh. Windows apply to every update of
a matching device, pushed or rolled out; remove the window to let one through now.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence

from cloud.store.windows import LabeledWindow
from runtime.desired_state import DesiredBundle, GatePolicy
from runtime.maintenance_window import MaintenanceWindow

__all__ = ["WindowBook", "Windows", "fingerprint", "with_windows"]

Windows = tuple[MaintenanceWindow, ...]


def with_windows(bundle: DesiredBundle, windows: Sequence[MaintenanceWindow]) -> DesiredBundle:
    """`bundle` with `windows` added to its gate (by name; the bundle's own come first).

    No windows: `bundle` itself, so a document without windows keeps its exact bytes."""
    if not windows:
        return bundle
    gate = bundle.gate.model_dump(mode="json", exclude_unset=True) if bundle.gate else {}
    have = [MaintenanceWindow.model_validate(w) for w in gate.get("windows", [])]
    names = {w.name for w in have}
    merged = have + [w for w in windows if w.name not in names]
    gate["windows"] = [w.to_dict() for w in merged]
    return bundle.model_copy(update={"gate": GatePolicy.model_validate(gate)})


class WindowBook:
    """The windows table, re-read at most every `ttl_s` (a tiny table, read often).

    Answers per label set are kept until the next re-read, with a cache key that
    changes whenever the windows of that label set do."""

    def __init__(
        self,
        load: Callable[[], list[LabeledWindow]],
        ttl_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._rows: list[LabeledWindow] = []
        self._answers: dict[frozenset[tuple[str, str]], tuple[Windows, str]] = {}

    def lookup(self, labels: Mapping[str, str]) -> tuple[Windows, str]:
        """The windows that apply to a device with `labels`, and their cache key
        ('' for none)."""
        key = frozenset(labels.items())
        with self._lock:
            if self._clock() - self._at >= self.ttl_s:
                rows = self._load()
                if rows != self._rows:
                    self._answers.clear()
                self._rows = rows
                self._at = self._clock()
            answer = self._answers.get(key)
            if answer is None:
                found = tuple(r.window for r in self._rows if r.applies_to(labels))
                answer = (found, fingerprint(found))
                if len(self._answers) > 10_000:
                    self._answers.clear()
                self._answers[key] = answer
            return answer

    def for_labels(self, labels: Mapping[str, str]) -> Windows:
        return self.lookup(labels)[0]


def fingerprint(windows: Sequence[MaintenanceWindow]) -> str:
    """A text that changes whenever `windows` do ('' for none): a cache key."""
    return "|".join(w.model_dump_json() for w in windows)
