"""The KPI soak gate: after a wave commits, its robots run the new bundle for a soak
time before the next wave goes out, and their figures are compared with the robots not
updated yet and with their own figures on the previous bundle.

Pure: no I/O. The caller passes the clock (``now``, epoch seconds) and a ``measure``
function that returns what a set of devices reported in a time window (:class:`Readings`:
telemetry samples, error events, shadow divergences). The gate reads once per decision,
from a soak's length before the wave's dispatch to the soak's end, and splits it.

The figures (:class:`Figures`): the deadline-miss rate (missed ticks over ticks) and
safety-envelope interventions per robot-minute, both increases of the robots' counters
within the window (a counter that went back, a restarted runtime, counts from zero
again); the loop latency p99 (the 99th percentile of the p99s reported); error events
per robot; the mean shadow action divergence the wave's robots reported for the bundle.
The wave regresses (:func:`judge`) when a figure exceeds a baseline's by more than the
policy allows (:class:`SoakPolicy`: absolute increases, a latency ratio), when it
passes an absolute cap (latency, divergence), or when none of its robots reported
telemetry in the window (nothing shows it is healthy). The baselines are the robots not
updated yet (same window) and the wave's robots before the update (a window of the soak's
length ending at the dispatch; left out when they reported too little). A regression
pauses the rollout with the figures; resuming it accepts the regression and the next
wave goes out. The decision and its figures are kept with the rollout
(``Rollout.gates["soak"]``) and taken once: a plane restarted mid-soak waits out the
same window.

The abort threshold (``gates["abort_threshold"]``, a fraction; absent: off) counts the
rollout's dispatched robots that FAILED, ROLLED_BACK or went SILENT, and those whose
own soak figures regressed (each counted once); once at least ``abort_min_robots``
robots were dispatched and more than that fraction of them are such, :func:`abort_due`
returns the decision with its figures and the caller aborts the rollout with rollback.
A robot skipped because its switch was held too long (an update lock, a closed
maintenance window) ran no new bundle: the soak leaves it out of the wave's figures and
the abort threshold out of its counts.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from typing import Any

from cloud.rollouts.engine import FAILURE_OUTCOMES, Rollout, SpecError

__all__ = [
    "Figures",
    "Readings",
    "Sample",
    "SoakPolicy",
    "abort_due",
    "abort_min_robots",
    "abort_threshold",
    "check_abort_min_robots",
    "check_abort_threshold",
    "crossed",
    "figures",
    "judge",
    "regressed",
    "soak_gate",
    "soak_policy",
    "soak_text",
]


def _limit(name: str, value: object, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    ):
        raise SpecError(f"{name} = {value!r}: must be a finite number >= 0")


@dataclass(frozen=True)
class SoakPolicy:
    soak_s: float = 0.0  # 0: no soak
    max_miss_rate_increase: float = 0.01
    max_interventions_increase: float = 1.0  # per robot-minute
    max_latency_p99_ms: float | None = None  # a cap on the wave's loop latency p99
    max_latency_ratio: float = 1.5  # the wave's p99 over a baseline's
    max_divergence: float | None = None  # a cap on the mean shadow action divergence
    max_errors_increase: float = 0.0  # error events per robot over a baseline's

    def __post_init__(self) -> None:
        for name in (
            "soak_s",
            "max_miss_rate_increase",
            "max_interventions_increase",
            "max_latency_ratio",
            "max_errors_increase",
        ):
            _limit(name, getattr(self, name))
        for name in ("max_latency_p99_ms", "max_divergence"):
            _limit(name, getattr(self, name), optional=True)
        if self.max_miss_rate_increase > 1:
            raise SpecError(
                f"max_miss_rate_increase = {self.max_miss_rate_increase}: a rate is at most 1"
            )
        if self.max_latency_ratio < 1:
            raise SpecError(
                f"max_latency_ratio = {self.max_latency_ratio}: must be at least 1 (the "
                "wave's loop latency p99 over the baseline's)"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> SoakPolicy:
        if not d:
            return cls()
        default = cls()

        def opt(key: str) -> float | None:
            value = d.get(key)
            return None if value is None else float(value)

        try:
            return cls(
                float(d["soak_s"]),
                float(d["max_miss_rate_increase"]),
                float(d["max_interventions_increase"]),
                opt("max_latency_p99_ms"),
                float(d.get("max_latency_ratio", default.max_latency_ratio)),
                opt("max_divergence"),
                float(d.get("max_errors_increase", default.max_errors_increase)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"gates.soak = {dict(d)!r}: {exc}") from exc

    def text(self) -> str:
        """The thresholds, as `rollout get` shows them."""
        parts = [
            f"deadline-miss rate +{self.max_miss_rate_increase:g}",
            f"interventions/min +{self.max_interventions_increase:g}",
            f"loop p99 x{self.max_latency_ratio:g}",
            f"error events/robot +{self.max_errors_increase:g}",
        ]
        if self.max_latency_p99_ms is not None:
            parts.append(f"loop p99 <= {self.max_latency_p99_ms:g} ms")
        if self.max_divergence is not None:
            parts.append(f"shadow divergence <= {self.max_divergence:g}")
        return ", ".join(parts)


def soak_policy(r: Rollout) -> SoakPolicy:
    return SoakPolicy.from_dict(r.spec.gates.get("soak"))


@dataclass(frozen=True)
class Sample:
    """One telemetry point: counters as the robot reported them, and its loop p99."""

    at: float
    ticks: int
    misses: int
    interventions: int
    latency_p99_ms: float = 0.0


@dataclass(frozen=True)
class Readings:
    """What a set of robots reported in a time window, per device: telemetry samples,
    the times of their error events, and the shadow action divergences (time, value)
    their update events reported."""

    samples: Mapping[str, Sequence[Sample]] = field(default_factory=dict)
    errors: Mapping[str, Sequence[float]] = field(default_factory=dict)
    shadow: Mapping[str, Sequence[tuple[float, float]]] = field(default_factory=dict)

    def between(self, start: float, end: float) -> Readings:
        """The readings from `start` to `end` (both included)."""
        return Readings(
            {d: [p for p in pts if start <= p.at <= end] for d, pts in self.samples.items()},
            {d: [t for t in ts if start <= t <= end] for d, ts in self.errors.items()},
            {d: [x for x in xs if start <= x[0] <= end] for d, xs in self.shadow.items()},
        )


@dataclass(frozen=True)
class Figures:
    devices: int
    reporting: int  # devices with at least two samples in the window
    ticks: int
    misses: int
    interventions: int
    minutes: float  # robot-minutes covered
    latency_p99_ms: float = 0.0  # p99 of the loop p99s reported (0: none reported)
    errors: int = 0  # error events of the devices in the window
    divergence: float | None = None  # mean of the devices' last shadow divergence

    @property
    def miss_rate(self) -> float:
        return self.misses / self.ticks if self.ticks else 0.0

    @property
    def interventions_per_min(self) -> float:
        return self.interventions / self.minutes if self.minutes > 0 else 0.0

    @property
    def errors_per_robot(self) -> float:
        return self.errors / self.devices if self.devices else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "miss_rate": self.miss_rate,
            "interventions_per_min": self.interventions_per_min,
            "errors_per_robot": self.errors_per_robot,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Figures:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def text(self) -> str:
        out = (
            f"deadline-miss rate {self.miss_rate:.4f}, "
            f"{self.interventions_per_min:.2f} interventions/min"
        )
        if self.latency_p99_ms > 0:
            out += f", loop p99 {self.latency_p99_ms:.2f} ms"
        if self.errors:
            out += f", {self.errors_per_robot:.2f} error events/robot"
        if self.divergence is not None:
            out += f", shadow divergence {self.divergence:.4g}"
        return out + f" ({self.reporting}/{self.devices} robot(s) reporting)"


def _increase(values: Sequence[int]) -> int:
    """A counter's increase over consecutive samples; a drop is a reset to zero."""
    total = 0
    for a, b in itertools.pairwise(values):
        total += b - a if b >= a else b
    return total


def _p99(values: Sequence[float]) -> float:
    """Nearest-rank 99th percentile (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def figures(device_ids: Sequence[str], got: Readings) -> Figures:
    """The fleet figures of `device_ids` from their readings."""
    reporting = ticks = misses = interventions = errors = 0
    minutes = 0.0
    latencies: list[float] = []
    divergences: list[float] = []
    for d in device_ids:
        errors += len(got.errors.get(d, ()))
        shadow = sorted(got.shadow.get(d, ()))
        if shadow:
            divergences.append(shadow[-1][1])
        pts = sorted(got.samples.get(d, ()), key=lambda s: s.at)
        if len(pts) < 2:
            continue
        reporting += 1
        ticks += _increase([p.ticks for p in pts])
        misses += _increase([p.misses for p in pts])
        interventions += _increase([p.interventions for p in pts])
        minutes += max(0.0, pts[-1].at - pts[0].at) / 60.0
        latencies += [p.latency_p99_ms for p in pts if p.latency_p99_ms > 0]
    return Figures(
        len(device_ids),
        reporting,
        ticks,
        misses,
        interventions,
        minutes,
        _p99(latencies),
        errors,
        sum(divergences) / len(divergences) if divergences else None,
    )


EPS = 1e-12
# The same robots before the update are compared with only when their window covered
# this many control ticks (20 robot-seconds at 50 Hz): over fewer, a single missed tick
# moves the rate by more than the thresholds do.
MIN_BEFORE_TICKS = 1000


def _worse(wave: Figures, name: str, base: Figures, policy: SoakPolicy) -> str:
    """Why `wave` regressed against the baseline `name` ("" for it did not)."""
    rate_up = wave.miss_rate - base.miss_rate
    if rate_up > policy.max_miss_rate_increase + EPS:
        return (
            f"deadline-miss rate up {rate_up:+.4f} > {policy.max_miss_rate_increase:g} "
            f"against {name}"
        )
    iv_up = wave.interventions_per_min - base.interventions_per_min
    if iv_up > policy.max_interventions_increase + EPS:
        return (
            f"interventions/min up {iv_up:+.2f} > {policy.max_interventions_increase:g} "
            f"against {name}"
        )
    if wave.latency_p99_ms > 0 and base.latency_p99_ms > 0:
        ratio = wave.latency_p99_ms / base.latency_p99_ms
        if ratio > policy.max_latency_ratio + EPS:
            return (
                f"loop latency p99 {wave.latency_p99_ms:.2f} ms is {ratio:.2f}x {name}'s "
                f"{base.latency_p99_ms:.2f} ms > {policy.max_latency_ratio:g}x"
            )
    err_up = wave.errors_per_robot - base.errors_per_robot
    if err_up > policy.max_errors_increase + EPS:
        return (
            f"error events/robot up {err_up:+.2f} > {policy.max_errors_increase:g} against {name}"
        )
    return ""


def judge(
    wave: Figures,
    baseline: Figures,
    policy: SoakPolicy,
    before: Figures | None = None,
) -> tuple[bool, str]:
    """(passed, text with the figures behind it). The wave is compared with the robots
    not updated yet (`baseline`) and, when they reported over at least
    ``MIN_BEFORE_TICKS``, with the same robots on the previous bundle (`before`); the
    absolute caps apply to the wave alone."""
    figs = f"wave: {wave.text()}; not yet updated: {baseline.text()}"
    if before is not None:
        figs += f"; same robots before: {before.text()}"
    if wave.reporting == 0 or wave.ticks == 0:
        return False, f"no telemetry from the wave's robots during the soak; {figs}"
    cap = policy.max_latency_p99_ms
    if cap is not None and wave.latency_p99_ms > cap + EPS:
        return False, f"loop latency p99 {wave.latency_p99_ms:.2f} ms > {cap:g} ms; {figs}"
    limit = policy.max_divergence
    if limit is not None and wave.divergence is not None and wave.divergence > limit + EPS:
        return False, f"shadow divergence {wave.divergence:.4g} > {limit:g}; {figs}"
    against = [("the robots not updated yet", baseline)]
    if before is not None and before.reporting and before.ticks >= MIN_BEFORE_TICKS:
        against.append(("the same robots before", before))
    for name, base in against:
        why = _worse(wave, name, base, policy)
        if why:
            return False, f"{why}; {figs}"
    return True, figs


Measure = Callable[[Sequence[str], float, float], Readings]

# An agent's clock may lag the plane's: a shadow divergence reported this much before
# the wave's dispatch still counts for it.
CLOCK_SKEW_S = 2.0


def regressed(
    device_ids: Sequence[str],
    got: Readings,
    baseline: Figures,
    policy: SoakPolicy,
    before: Readings | None = None,
) -> list[str]:
    """The devices whose own figures regressed against `baseline` and their own figures
    `before` (one without telemetry in the window is not counted: nothing shows it
    regressed)."""
    out = []
    for d in device_ids:
        f = figures([d], got)
        own = figures([d], before) if before is not None else None
        if f.reporting and f.ticks and not judge(f, baseline, policy, own)[0]:
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


DEFAULT_ABORT_MIN_ROBOTS = 10


def check_abort_min_robots(value: object) -> int | None:
    """A valid minimum robot count (an integer >= 0) or None (the default); SpecError
    otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SpecError(f"abort_min_robots = {value!r}: expected a whole number >= 0")
    return value


def abort_min_robots(r: Rollout) -> int:
    """The dispatched robots the abort threshold waits for: as configured, else
    DEFAULT_ABORT_MIN_ROBOTS or every robot of a smaller rollout."""
    got = check_abort_min_robots(r.spec.gates.get("abort_min_robots"))
    if got is not None:
        return got
    return min(DEFAULT_ABORT_MIN_ROBOTS, sum(len(w.device_ids) for w in r.waves))


def crossed(dispatched: int, bad: int, threshold: float, min_robots: int = 0) -> bool:
    """More than `threshold` of `dispatched` devices are bad (none dispatched, or fewer
    than `min_robots`: no). The threshold is taken as written (0.3 of 10 is 3, not
    3.0000000000000004)."""
    return (
        dispatched > 0 and dispatched >= min_robots and bad > Fraction(repr(threshold)) * dispatched
    )


def abort_due(r: Rollout) -> dict[str, Any] | None:
    """The abort decision and its figures when the rollout's bad devices are past its
    abort threshold, else None. Pure: the caller aborts with rollback and records it."""
    threshold = abort_threshold(r)
    if threshold is None:
        return None
    min_robots = abort_min_robots(r)
    held = {d for w in r.waves for d in w.held_skipped}  # ran no new bundle
    dispatched = [
        d for w in r.waves if w.dispatched_at is not None for d in w.device_ids if d not in held
    ]
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
    if not crossed(len(dispatched), bad, threshold, min_robots):
        return None
    fraction = bad / len(dispatched)
    return {
        "threshold": threshold,
        "min_robots": min_robots,
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
    decision, once, on one reading (`measure`) of the wave's and the not-yet-updated
    robots from a soak's length before the wave's dispatch to the window's end: the
    wave's robots on the previous bundle (before the dispatch), their shadow
    divergence (reported during the update), and everyone's figures in the window. A
    regression pauses the rollout; a resume accepts it."""
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
    # a robot skipped while held runs the previous bundle: it is neither the wave nor a
    # baseline (it may switch any time)
    held = set(r.waves[prev].held_skipped)
    updated = [d for d in r.waves[prev].device_ids if d not in held]
    waiting = [d for w in r.waves[wave:] for d in w.device_ids]
    start, end = float(st["started"]), float(st["until"])
    dispatched = r.waves[prev].dispatched_at
    sent = float(dispatched) if dispatched is not None else start
    got = measure([*updated, *waiting], min(sent, start) - policy.soak_s, end)
    soaked = got.between(start, end)
    soaked = Readings(soaked.samples, soaked.errors, got.between(sent - CLOCK_SKEW_S, end).shadow)
    before = got.between(sent - policy.soak_s, sent)
    wave_f, base_f = figures(updated, soaked), figures(waiting, soaked)
    before_f = figures(updated, Readings(before.samples, before.errors))
    ok, text = judge(wave_f, base_f, policy, before_f)
    st.update(
        verdict="passed" if ok else "regressed",
        decided_at=now,
        text=text,
        wave=wave_f.to_dict(),
        baseline=base_f.to_dict(),
        before=before_f.to_dict(),
        regressed=regressed(updated, soaked, base_f, policy, before),
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
