"""The deadline-scheduled control loop: read → check → infer → filter → write, every period.

Ticks are scheduled on absolute times ``start + k * period`` (no drift: a late tick
does not push the next one), measured with the monotonic ``perf_counter_ns`` clock.
A tick whose action is written more than ``deadline_ms`` after its scheduled start
is a deadline miss; if the policy's answer comes after the deadline the stale answer
is dropped and the fallback action is written instead. Slots that passed while a
tick overran are skipped (and counted as misses), never run in a burst.

A watchdog thread writes the fallback action when a tick has not written anything
by its deadline (a blocked adapter read or a hung policy), so the robot is never
left on its last command for long.

Policy swaps happen on a tick boundary: `swap` hands over an already loaded and
warmed `LoadedPolicy`; the loop picks it up at the start of the next tick at which
the adapter says it is safe to switch. `shadow` runs a candidate beside the active
policy on the same observations, after the active action is written, and never
actuates it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from runtime.adapters import AdapterError, AdapterTimeout, RobotAdapter
from runtime.envelope import FALLBACK_REASONS, Reason, SafetyEnvelope
from runtime.kernel import PolicyKernel
from runtime.manifest import BundleManifest
from runtime.metrics import LatencyHistogram, LoopCounters, MetricsSnapshot
from runtime.realtime import Scheduling, enter_loop_thread
from runtime.recording.recorder import FlightRecorder

__all__ = [
    "ControlLoop",
    "LoadedPolicy",
    "LoopError",
    "Policy",
    "ShadowResult",
    "make_thread_realtime",
    "realtime_thread",
]

log = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]


class LoopError(RuntimeError):
    """The loop could not do what was asked (swap refused, shadow timed out, ...)."""


class Policy(Protocol):
    """What the loop needs from an inference session (`runtime.session.PolicySession`)."""

    @property
    def provider(self) -> str: ...

    def step(self, obs: F32) -> F32: ...


@dataclass
class LoadedPolicy:
    """A verified bundle's policy, loaded and warmed, with its manifest."""

    manifest: BundleManifest
    session: Policy
    slot: str | None = None
    policy_sha256: str = ""
    root_digest: str = ""

    @property
    def label(self) -> str:
        return f"{self.manifest.name}@{self.manifest.version}"


@dataclass(frozen=True)
class ShadowResult:
    """How a candidate behaved beside the active policy (the update's shadow step)."""

    ticks: int
    compared: int
    divergence_mean: float
    divergence_max: float
    nan_rate: float
    latency_p99_ms: float
    envelope_violations: int
    errors: int


class _Shadow:
    """A candidate's kernel fed the active policy's observations; never actuated.

    The candidate's action on a tick is exactly what it would have written (its
    fallback included: that is its next tick's previous action).
    """

    def __init__(self, candidate: LoadedPolicy, ticks: int) -> None:
        self.candidate = candidate
        self.wanted = ticks
        self.kernel = PolicyKernel(candidate.manifest, candidate.session)
        self.latency = LatencyHistogram()
        self.ticks = 0
        self.compared = 0
        self.div_sum = 0.0
        self.div_max = 0.0
        self.done = threading.Event()

    def step(self, obs: object, active_action: F32) -> None:
        self.ticks += 1
        counts = self.kernel.counts
        fell_back = sum(counts[r] for r in FALLBACK_REASONS)
        t0 = time.perf_counter_ns()
        action = self.kernel.step(obs)
        self.latency.record_ns(time.perf_counter_ns() - t0)
        # Divergence is measured on the candidate's own (filtered) actions; a tick on
        # which it fell back is counted among its interventions instead.
        own = sum(counts[r] for r in FALLBACK_REASONS) == fell_back
        if own and action.shape == active_action.shape:
            d = float(np.max(np.abs(action - active_action)))
            self.compared += 1
            self.div_sum += d
            self.div_max = max(self.div_max, d)
        if self.ticks >= self.wanted:
            self.done.set()

    def result(self) -> ShadowResult:
        counts = self.kernel.counts
        return ShadowResult(
            ticks=self.ticks,
            compared=self.compared,
            divergence_mean=self.div_sum / self.compared if self.compared else 0.0,
            divergence_max=self.div_max,
            nan_rate=counts[Reason.ACTION_NONFINITE.value] / self.ticks if self.ticks else 0.0,
            latency_p99_ms=self.latency.quantile_ms(0.99),
            envelope_violations=sum(counts.values()),
            errors=counts[Reason.POLICY_ERROR.value],
        )


@dataclass
class _Plan:
    policy: LoadedPolicy
    rate_hz: float
    period_ns: int
    deadline_ns: int
    kernel: PolicyKernel


class ControlLoop:
    """Runs one `LoadedPolicy` against one `RobotAdapter` at a fixed rate.

    Use `run()` in the calling thread, or `start()` / `stop()` for a background thread.
    """

    def __init__(
        self,
        adapter: RobotAdapter,
        policy: LoadedPolicy,
        *,
        rate_hz: float | None = None,
        watchdog: bool = True,
        spin_us: float = 0.0,
        realtime_priority: int | None = None,
        loop_cpus: tuple[int, ...] | None = None,
        on_tick: Callable[[int], None] | None = None,
    ) -> None:
        self.adapter = adapter
        self.counters = LoopCounters()
        self._rate_override = rate_hz
        self._spin_ns = int(spin_us * 1000)
        self._rt_priority = realtime_priority
        self._loop_cpus = loop_cpus
        self.scheduling: Scheduling | None = None
        """How the loop thread is scheduled (set when it starts running)."""
        self.recorder: FlightRecorder | None = None
        """Gets every tick after its write (`runtime.recording`), when set."""
        self._watchdog_enabled = watchdog
        self._on_tick = on_tick
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._next: _Plan | None = None
        self._swapped = threading.Event()
        self._shadow: _Shadow | None = None
        self._shadow_lock = threading.Lock()
        self._error: BaseException | None = None
        self.swaps = 0
        # Watchdog view of the current tick (plain attributes: each write is atomic).
        self._tick_due_ns = 0  # deadline of the tick in progress, 0 when none
        self._tick_written = True
        self._apply(self._prepare(policy))

    # ---- policy and timing -------------------------------------------------------------

    def _prepare(self, policy: LoadedPolicy) -> _Plan:
        """Everything a switch needs, built off the loop thread (the switch only assigns)."""
        ctl = policy.manifest.control
        rate = self._rate_override or ctl.rate_hz
        period_ns = round(1e9 / rate)
        return _Plan(
            policy=policy,
            rate_hz=rate,
            period_ns=period_ns,
            deadline_ns=min(round(ctl.deadline_ms * 1e6), period_ns),
            kernel=PolicyKernel(policy.manifest, policy.session, self.counters.interventions),
        )

    def _apply(self, plan: _Plan) -> None:
        self.policy = plan.policy
        self.rate_hz = plan.rate_hz
        self.period_ns = plan.period_ns
        self.deadline_ns = plan.deadline_ns
        # Carry the previous action over into the new kernel (hold / rate limit
        # continue across a swap); a different action size starts afresh.
        prev = getattr(self, "_prev", None)
        if prev is not None and prev.shape == plan.kernel.prev.shape:
            plan.kernel.commit(prev)
        self._kernel = plan.kernel
        self._prev = plan.kernel.prev

    @property
    def kernel(self) -> PolicyKernel:
        """The active policy's kernel (the tick's arithmetic)."""
        return self._kernel

    @property
    def envelope(self) -> SafetyEnvelope:
        return self._kernel.envelope

    @property
    def last_action(self) -> F32:
        return self._prev

    def snapshot(self) -> MetricsSnapshot:
        return self.counters.snapshot(self.rate_hz)

    # ---- control from other threads ----------------------------------------------------

    def swap(self, policy: LoadedPolicy, timeout_s: float = 5.0) -> None:
        """Switch to `policy` at the next tick boundary where the robot allows it.

        Blocks until the loop has switched; LoopError if it did not within `timeout_s`.
        """
        plan = self._prepare(policy)
        if self._thread is None or not self._thread.is_alive():
            self._apply(plan)
            self.swaps += 1
            return
        self._swapped.clear()
        self._next = plan
        if not self._swapped.wait(timeout_s):
            self._next = None
            raise LoopError(
                f"the loop did not switch to {policy.label} within {timeout_s:.1f} s "
                "(robot adapter not safe to switch, or the loop is stalled)"
            )
        log.info("switched policy", extra={"policy": policy.label, "slot": policy.slot})

    def shadow(
        self, candidate: LoadedPolicy, ticks: int, timeout_s: float | None = None
    ) -> ShadowResult:
        """Run `candidate` beside the active policy for `ticks` ticks (not actuated)."""
        if ticks < 1:
            raise LoopError(f"shadow needs at least 1 tick, got {ticks}")
        run = _Shadow(candidate, ticks)
        with self._shadow_lock:
            if self._shadow is not None:
                raise LoopError("a shadow run is already in progress")
            self._shadow = run
        if timeout_s is None:
            timeout_s = 10.0 + 3.0 * ticks / self.rate_hz
        try:
            if not run.done.wait(timeout_s):
                raise LoopError(
                    f"shadow run of {candidate.label} saw {run.ticks}/{ticks} ticks "
                    f"in {timeout_s:.1f} s (is the loop running?)"
                )
        finally:
            with self._shadow_lock:
                self._shadow = None
        return run.result()

    def start(self) -> None:
        if self._thread is not None:
            raise LoopError("the loop is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run_guarded, name="control-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def error(self) -> BaseException | None:
        return self._error

    def _run_guarded(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # reported through .error; the service decides
            self._error = exc
            log.exception("control loop died")

    # ---- the loop ----------------------------------------------------------------------

    def run(self, *, ticks: int | None = None, duration_s: float | None = None) -> MetricsSnapshot:
        """Run until `stop()`, `ticks` ticks or `duration_s` seconds; returns the metrics."""
        self._stop.clear()
        self.scheduling = enter_loop_thread(self._rt_priority, self._loop_cpus)
        if self._watchdog_enabled:
            self._watchdog = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
            self._watchdog.start()
        clock = time.perf_counter_ns
        sleep = time.sleep
        counters = self.counters
        start = clock()
        end = start + int(duration_s * 1e9) if duration_s is not None else None
        k = 0
        done = 0
        try:
            while not self._stop.is_set():
                due = start + k * self.period_ns
                now = clock()
                wait = due - now
                if wait > 0:
                    if wait > self._spin_ns:
                        sleep((wait - self._spin_ns) / 1e9)
                    while clock() < due:
                        pass
                swap_tick = self._next is not None and self.adapter.is_safe_to_switch()
                if swap_tick:
                    misses_before = counters.deadline_misses
                    self._switch()
                    start, k = due, 0  # the new policy's period counts from this tick
                t0 = clock()
                counters.pending_jitter.append(t0 - due if t0 > due else 0)
                self._tick_due_ns = due + self.deadline_ns
                self._tick_written = False
                self._tick(due, t0)
                if swap_tick and counters.deadline_misses > misses_before:
                    counters.swap_misses += 1
                done += 1
                if self._on_tick is not None:
                    self._on_tick(done)
                if ticks is not None and done >= ticks:
                    break
                if end is not None and clock() >= end:
                    # Slots before `end` that a final stall swallowed were missed too.
                    swallowed = (end - 1 - start) // self.period_ns - k
                    if swallowed > 0:
                        counters.deadline_misses += swallowed
                        counters.skipped += swallowed
                    break
                k += 1
                # Skip slots that already passed: a late loop must not run a burst of ticks.
                behind = (clock() - start) // self.period_ns - k
                if behind > 0:
                    counters.deadline_misses += behind
                    counters.skipped += behind
                    k += behind
        finally:
            counters.flush()
            self._tick_due_ns = 0
            self._stop.set()
            if self._watchdog is not None:
                self._watchdog.join(1.0)
                self._watchdog = None
        return self.snapshot()

    def _switch(self) -> None:
        plan = self._next
        assert plan is not None
        self._next = None
        self._apply(plan)
        self.swaps += 1
        self._swapped.set()

    def _tick(self, due: int, t0: int) -> None:
        counters = self.counters
        kernel = self._kernel
        prev = self._prev
        obs: object = None
        action: F32 | None = None
        try:
            obs = self.adapter.read_observation()
        except AdapterTimeout:
            counters.interventions[Reason.ADAPTER_TIMEOUT.value] += 1
        except Exception as exc:  # AdapterError, or a third-party adapter's own error
            counters.interventions[Reason.ADAPTER_ERROR.value] += 1
            log.debug("adapter read failed: %s", exc)
        else:
            action = kernel.propose(obs)
        if action is None:
            action = kernel.fallback()
        deadline = due + self.deadline_ns
        late = time.perf_counter_ns() > deadline
        if late:
            # The answer is stale: the state it was computed from is a deadline old.
            counters.interventions[Reason.DEADLINE_OVERRUN.value] += 1
            action = kernel.fallback()
        # Keep our own copy before actuating: the action may be the session's buffer.
        kernel.commit(action)
        with self._write_lock:
            self._tick_written = True
            try:
                self.adapter.write_action(prev)
            except Exception as exc:  # the loop must outlive a flaky robot link
                counters.interventions[Reason.ADAPTER_ERROR.value] += 1
                log.debug("adapter write failed: %s", exc)
        t1 = time.perf_counter_ns()
        pending = counters.pending_latency
        pending.append(t1 - t0)
        counters.ticks += 1
        if late or t1 > deadline:
            counters.deadline_misses += 1
        if len(pending) >= counters.FLUSH_EVERY or t1 > counters.next_flush_ns:
            counters.flush()
        recorder = self.recorder
        if recorder is not None:
            recorder.record(due, t1 - t0, obs, prev, counters, self.policy)
        shadow = self._shadow
        if shadow is not None and not shadow.done.is_set():
            shadow.step(obs, prev)

    def _watch(self) -> None:
        """Writes the fallback action when a tick has written nothing by its deadline."""
        if self._rt_priority is not None:
            # Same priority as the loop: a watchdog preempted while holding the GIL would
            # stall the real-time loop thread behind it (priority inversion).
            _make_realtime(self._rt_priority)
        while not self._stop.is_set():
            due = self._tick_due_ns
            period_s = self.period_ns / 1e9
            if (
                due
                and not self._tick_written
                and time.perf_counter_ns() > due
                and self._write_lock.acquire(timeout=period_s)
            ):
                try:
                    if not self._tick_written and self._tick_due_ns == due:
                        self.counters.interventions[Reason.WATCHDOG.value] += 1
                        self.adapter.write_action(self._kernel.fallback())
                        # Re-arm one period later while the tick stays stalled.
                        self._tick_due_ns = due + self.period_ns
                except AdapterError:
                    self.counters.interventions[Reason.ADAPTER_ERROR.value] += 1
                finally:
                    self._write_lock.release()
            # Check twice a period, but not more often than every 2 ms (2 shared cores).
            self._stop.wait(max(period_s / 2, 0.002))


def make_thread_realtime(priority: int) -> None:
    """SCHED_FIFO for the calling thread and the threads it starts later (Linux threads
    inherit their creator's policy); logs and carries on where not permitted."""
    _make_realtime(priority)


def _make_realtime(priority: int) -> None:
    """SCHED_FIFO for the calling thread only (Linux schedules threads individually)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (AttributeError, OSError) as exc:  # not Linux, or no CAP_SYS_NICE
        log.warning("cannot run the control loop at real-time priority %d: %s", priority, exc)


@contextlib.contextmanager
def realtime_thread(priority: int | None) -> Iterator[None]:
    """Run the calling thread SCHED_FIFO at `priority` inside the block (None: no change).

    For threads that do Python work (staging a bundle) beside a real-time loop: a
    normal-priority thread preempted while it holds the GIL would stall the loop.
    """
    if priority is None:
        yield
        return
    try:
        before = os.sched_getscheduler(0), os.sched_getparam(0)
    except (AttributeError, OSError):
        yield
        return
    _make_realtime(priority)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, before[0], before[1])
