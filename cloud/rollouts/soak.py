"""The KPI soak gate: after a wave commits, its robots run the new bundle for a soak
time before the next wave goes out, and their figures are compared with the robots not
updated yet.

Pure: no I/O. The caller passes the clock (``now``, epoch seconds) and a ``measure``
function that returns each device's telemetry samples in a time window.

The figures are the deadline-miss rate (missed ticks over ticks) and safety-envelope
interventions per robot-minute, both from the counters the robots report, taken as
increases within the soak window (a counter that went back, a restarted runtime,
counts from zero again). The wave regresses when its rate exceeds the not-yet-updated
robots' by more than ``max_miss_rate_increase`` or its interventions per minute exceed
theirs by more than ``max_interventions_increase``; a wave none of whose robots reported
telemetry in the window regresses too (nothing shows it is healthy). A regression pauses
the rollout with the figures; resuming it accepts the regression and the next wave goes
out. The decision and its figures are kept with the rollout (``Rollout.gates["soak"]``)
and taken once: a plane restarted mid-soak waits out the same window.

The abort threshold (``gates["abort_threshold"]``, a fraction; absent: off) counts the
rollout's dispatched robots that FAILED, ROLLED_BACK or went SILENT, and those whose
own soak figures regressed against the not-yet-updated robots (each counted once);
when more than that fraction of the dispatched robots are such, :func:`abort_due`
returns the decision with its figures and the caller aborts the rollout with rollback.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from cloud.rollouts.engine import FAILURE_OUTCOMES, Rollout, SpecError

__all__ = [
    "Figures",
    "Sample",
    "SoakPolicy",
    "abort_due",
    "abort_threshold",
    "check_abort_threshold",
    "crossed",
    "figures",
    "judge",
    "regressed",
    "soak_gate",
    "soak_policy",
    "soak_text",
]


@dataclass(frozen=True)
class SoakPolicy:
    soak_s: float = 0.0  # 0: no soak
    max_miss_rate_increase: float = 0.01
    max_interventions_increase: float = 1.0  # per robot-minute

    def __post_init__(self) -> None:
        for name in ("soak_s", "max_miss_rate_increase", "max_interventions_increase"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise SpecError(f"{name} = {value!r}: must be a finite number >= 0")
        if self.max_miss_rate_increase > 1:
            raise SpecError(
                f"max_miss_rate_increase = {self.max_miss_rate_increase}: a rate is at most 1"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> SoakPolicy:
        if not d:
            return cls()
        try:
            return cls(
                float(d["soak_s"]),
                float(d["max_miss_rate_increase"]),
                float(d["max_interventions_increase"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"gates.soak = {dict(d)!r}: {exc}") from exc


def soak_policy(r: Rollout) -> SoakPolicy:
    return SoakPolicy.from_dict(r.spec.gates.get("soak"))


@dataclass(frozen=True)
class Sample:
    """One telemetry point: counters as the robot reported them."""

    at: float
    ticks: int
    misses: int
    interventions: int


@dataclass(frozen=True)
class Figures:
    devices: int
    reporting: int  # devices with at least two samples in the window
    ticks: int
    misses: int
    interventions: int
    minutes: float  # robot-minutes covered

    @property
    def miss_rate(self) -> float:
        return self.misses / self.ticks if self.ticks else 0.0

    @property
    def interventions_per_min(self) -> float:
        return self.interventions / self.minutes if self.minutes > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "miss_rate": self.miss_rate,
            "interventions_per_min": self.interventions_per_min,
        }

    def text(self) -> str:
        return (
            f"deadline-miss rate {self.miss_rate:.4f}, "
            f"{self.interventions_per_min:.2f} interventions/min "
            f"({self.reporting}/{self.devices} robot(s) reporting)"
        )


def _increase(values: Sequence[int]) -> int:
    """A counter's increase over consecutive samples; a drop is a reset to zero."""
    total = 0
    for a, b in itertools.pairwise(values):
        total += b - a if b >= a else b
    return total


def figures(device_ids: Sequence[str], samples: Mapping[str, Sequence[Sample]]) -> Figures:
    """The fleet figures of `device_ids` from their samples (each oldest first)."""
    reporting = ticks = misses = interventions = 0
    minutes = 0.0
    for d in device_ids:
        pts = sorted(samples.get(d, ()), key=lambda s: s.at)
        if len(pts) < 2:
            continue
        reporting += 1
        ticks += _increase([p.ticks for p in pts])
        misses += _increase([p.misses for p in pts])
        interventions += _increase([p.interventions for p in pts])
        minutes += max(0.0, pts[-1].at - pts[0].at) / 60.0
    return Figures(len(device_ids), reporting, ticks, misses, interventions, minutes)


def judge(wave: Figures, baseline: Figures, policy: SoakPolicy) -> tuple[bool, str]:
    """(passed, text with the figures behind it)."""
    figs = f"wave: {wave.text()}; not yet updated: {baseline.text()}"
    if wave.reporting == 0 or wave.ticks == 0:
        return False, f"no telemetry from the wave's robots during the soak; {figs}"
    rate_up = wave.miss_rate - baseline.miss_rate
    if rate_up > policy.max_miss_rate_increase + 1e-12:
        return False, (
            f"deadline-miss rate up {rate_up:+.4f} > {policy.max_miss_rate_increase:g}; {figs}"
        )
    iv_up = wave.interventions_per_min - baseline.interventions_per_min
    if iv_up > policy.max_interventions_increase + 1e-12:
        return False, (
            f"interventions/min up {iv_up:+.2f} > {policy.max_interventions_increase:g}; {figs}"
        )
    return True, figs


Measure = Callable[[Sequence[str], float, float], Mapping[str, Sequence[Sample]]]


def regressed(
    device_ids: Sequence[str],
    samples: Mapping[str, Sequence[Sample]],
    baseline: Figures,
    policy: SoakPolicy,
) -> list[str]:
    """The devices whose own figures regressed against `baseline` (one without
    telemetry in the window is not counted: nothing shows it regressed)."""
    out = []
    for d in device_ids:
        f = figures([d], samples)
        if f.reporting and f.ticks and not judge(f, baseline, policy)[0]:
            out.append(d)
    return out


def check_abort_threshold(value: object) -> float | None:
    """A valid abort threshold (a fraction in [0, 1]) or None (off); SpecError otherwise."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= 1
    ):
        raise SpecError(f"abort_threshold = {value!r}: expected a fraction from 0 to 1")
    return float(value)


def abort_threshold(r: Rollout) -> float | None:
    return check_abort_threshold(r.spec.gates.get("abort_threshold"))


def crossed(dispatched: int, bad: int, threshold: float) -> bool:
    """More than `threshold` of `dispatched` devices are bad (none dispatched: no). The
    threshold is taken as written (0.3 of 10 is 3, not 3.0000000000000004)."""
    return dispatched > 0 and bad > Fraction(repr(threshold)) * dispatched


def abort_due(r: Rollout) -> dict[str, Any] | None:
    """The abort decision and its figures when the rollout's bad devices are past its
    abort threshold, else None. Pure: the caller aborts with rollback and records it."""
    threshold = abort_threshold(r)
    if threshold is None:
        return None
    dispatched = [d for w in r.waves if w.dispatched_at is not None for d in w.device_ids]
    failed = sorted(
        d
        for w in r.waves
        if w.dispatched_at is not None
        for d, o in w.outcomes.items()
        if o.get("outcome") in FAILURE_OUTCOMES
    )
    soaked = {
        d
        for st in (r.gates.get("soak") or {}).values()
        if isinstance(st, dict)
        for d in st.get("regressed") or ()
    }
    worse = sorted(soaked - set(failed))
    bad = len(failed) + len(worse)
    if not crossed(len(dispatched), bad, threshold):
        return None
    fraction = bad / len(dispatched)
    return {
        "threshold": threshold,
        "dispatched": len(dispatched),
        "failed": failed,
        "regressed": worse,
        "fraction": fraction,
        "text": (
            f"{bad}/{len(dispatched)} dispatched robot(s) failed or regressed "
            f"({len(failed)} failed, {len(worse)} regressed in a soak) = {fraction:.2f} "
            f"> abort threshold {threshold:g}"
        ),
    }


def soak_gate(r: Rollout, wave: int, now: float, measure: Measure) -> bool:
    """Whether wave `wave` may go out as far as the soak of the wave before it goes.

    The first call after that wave succeeded starts its soak; the window's end takes the
    decision, once. A regression pauses the rollout; a resume accepts it."""
    policy = soak_policy(r)
    if policy.soak_s <= 0 or wave == 0:
        return True
    prev = wave - 1
    soaks = r.gates.setdefault("soak", {})
    st = soaks.get(str(prev))
    if st is None:
        soaks[str(prev)] = {"started": now, "until": now + policy.soak_s}
        r.note(now, f"wave {prev} soaks for {policy.soak_s:g} s before wave {wave}")
        return False
    verdict = st.get("verdict")
    if verdict in ("passed", "accepted"):
        return True
    if verdict == "regressed":  # paused on it, and running again: resumed by an operator
        st["verdict"] = "accepted"
        r.note(now, f"wave {prev}'s soak regression accepted on resume")
        return True
    if now < float(st["until"]):
        return False
    updated = r.waves[prev].device_ids
    waiting = [d for w in r.waves[wave:] for d in w.device_ids]
    start, end = float(st["started"]), float(st["until"])
    got = measure([*updated, *waiting], start, end)
    wave_f, base_f = figures(updated, got), figures(waiting, got)
    ok, text = judge(wave_f, base_f, policy)
    st.update(
        verdict="passed" if ok else "regressed",
        decided_at=now,
        text=text,
        wave=wave_f.to_dict(),
        baseline=base_f.to_dict(),
        regressed=regressed(updated, got, base_f, policy),
    )
    if ok:
        r.note(now, f"wave {prev} soak passed: {text}")
        return True
    r.pause(now, f"wave {prev} soak regressed: {text}")
    return False


def soak_text(r: Rollout, wave: int) -> str:
    """What `rollout get` shows for a wave's soak ("" for none)."""
    st = (r.gates.get("soak") or {}).get(str(wave))
    if not isinstance(st, dict):
        return ""
    verdict = st.get("verdict")
    if verdict is None:
        until = dt.datetime.fromtimestamp(float(st["until"]), dt.UTC)
        return f"soaking until {until.strftime('%H:%M:%S')} UTC"
    return f"soak {verdict}: {st.get('text', '')}"
