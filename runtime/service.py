"""The runtime's composition root: lock, slots, verified policy, control loop, control socket.

Usage (what ``edgeflux runtime run`` does)::

    from runtime.layout import RobotLayout
    from runtime.config import RuntimeConfig
from runtime.health import HealthLimits
    from runtime.service import RuntimeService

    svc = RuntimeService(RobotLayout.at("/tmp/robot-1"), RuntimeConfig(adapter="gym"))
    svc.start()          # lock the root, boot a verified slot, start loop + RuntimeControl
    svc.wait()           # until SIGTERM / SIGINT (install_signal_handlers) or svc.stop()
    svc.stop()

The fleet agent drives updates through `RuntimeControl` (`runtime.control_client`):
stage (verify, copy into the inactive slot, load and warm — while the loop runs),
shadow, activate (switch on a tick boundary, then a health window that rolls back
by itself on failure), commit (the only step that advances the anti-rollback
counter) or rollback.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from protos.lifecycle import Failure, Reason, RuntimeState
from runtime import health
from runtime.adapters import AdapterError, RobotAdapter, load_adapter
from runtime.antirollback import AntiRollbackStore
from runtime.bundle import POLICY_NAME, DeviceProfile, VerifiedBundle, verify_bundle
from runtime.config import RuntimeConfig
from runtime.engine_check import CPU, calibration_observations, compare_sessions
from runtime.health import HealthLimits
from runtime.layout import RobotLayout
from runtime.loop import (
    ControlLoop,
    LoadedPolicy,
    LoopError,
    ShadowResult,
    make_thread_realtime,
    realtime_thread,
)
from runtime.manifest import BundleManifest
from runtime.realtime import lock_memory, warn_unless_realtime
from runtime.recording import FlightRecorder
from runtime.sdnotify import SystemdNotifier
from runtime.session import PolicySession, SessionError
from runtime.slots import BootChoice, RuntimeLock, SlotError, SlotStore
from runtime.status import ControlError, StatusInfo, empty_metrics
from runtime.trust import TrustStore

__all__ = ["ControlError", "RuntimeService", "StatusInfo"]

log = logging.getLogger(__name__)


class RuntimeService:
    def __init__(
        self,
        layout: RobotLayout,
        config: RuntimeConfig | None = None,
        *,
        adapter: RobotAdapter | None = None,
        device: DeviceProfile | None = None,
        serve: bool = True,
    ) -> None:
        self.layout = layout
        self.config = config or RuntimeConfig()
        self._adapter = adapter
        self._device = device
        self._serve = serve
        self._lock = RuntimeLock(layout)
        self._ops = threading.Lock()  # one update operation at a time
        self._stopped = threading.Event()
        self._stop_requested = threading.Event()
        self.trust = TrustStore(layout.trust)
        self.counters = AntiRollbackStore(layout.antirollback)
        self.slots = SlotStore(layout, self._verify, boot_tries=self.config.boot_tries)
        self.loop: ControlLoop | None = None
        self.recorder: FlightRecorder | None = None
        self._engine_checks: dict[int, str] = {}  # id(session) -> the engine check's verdict
        self._server: Any = None
        self._staged: LoadedPolicy | None = None
        self._last_good: LoadedPolicy | None = None
        self._previous: LoadedPolicy | None = None  # what a failed health window returns to
        self._candidate: VerifiedBundle | None = None  # the staged/activated slot, as verified
        self._state = RuntimeState.STOPPED
        self._failure: Failure | None = None

    # ---- pieces ------------------------------------------------------------------------

    def _verify(self, path: Path) -> VerifiedBundle:
        if self._device is None:
            self._device = DeviceProfile.local()
        return verify_bundle(path, self.trust, counters=self.counters, device=self._device)

    def load(self, verified: VerifiedBundle, slot: str | None) -> LoadedPolicy:
        """Load and warm a verified bundle's policy from the bytes that were verified."""
        policy_path = verified.path / POLICY_NAME
        data = policy_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != verified.policy_sha256:
            raise SlotError(f"{policy_path} changed after verification; refusing to load it")
        allowed = list(verified.manifest.compatibility.execution_providers)
        if self.config.providers is not None:
            allowed = [p for p in allowed if p in self.config.providers]
        # External weights are read by onnxruntime next to the model file, so such a
        # policy is loaded by its path in the verified directory (never copied).
        model: Path | bytes = policy_path if verified.external_data else data
        session = PolicySession(
            model,
            allowed_providers=allowed,
            intra_op_threads=self.config.intra_op_threads,
            fp16=self.config.fp16,
            engine_cache_dir=self.config.engine_cache_dir or (self.layout.var / "engine-cache"),
            warmup_runs=self.config.warmup_runs,
        )
        io = verified.manifest.io
        for what, graph, declared in (
            ("takes", session.obs_size, io.obs_dim),
            ("returns", session.action_size, io.action_dim),
        ):
            if graph != declared:
                kind = "observation" if what == "takes" else "action"
                raise SessionError(
                    f"{policy_path}: the graph {what} {graph} values per tick, the manifest's "
                    f"{kind} bounds declare {declared}; rebuild the bundle with matching bounds"
                )
        session = self._checked_engine(data, session, verified.manifest, allowed)
        check = getattr(self._adapter, "check_manifest", None)
        if check is not None:  # an adapter with a declared topic/field mapping
            try:
                check(verified.manifest)
            except AdapterError as exc:  # this bundle cannot drive this robot's topics
                raise SessionError(str(exc)) from None
        return LoadedPolicy(
            manifest=verified.manifest,
            session=session,
            slot=slot,
            policy_sha256=verified.policy_sha256,
            root_digest=verified.root_digest,
        )

    def _checked_engine(
        self, data: bytes, session: PolicySession, manifest: BundleManifest, allowed: list[str]
    ) -> PolicySession:
        """An accelerated session only if it agrees with CPU FP32; else the CPU session."""
        if session.provider == CPU:
            return session
        reference = PolicySession(
            data,
            allowed_providers=[CPU],
            intra_op_threads=self.config.intra_op_threads,
            warmup_runs=0,
        )
        result = compare_sessions(
            session.step,
            reference.step,
            calibration_observations(manifest),
            provider=session.provider,
            fp16=session.fp16,
            tolerance=manifest.compatibility.accelerated_tolerance,
        )
        if result.ok:
            log.info("engine check passed: %s", result.describe())
            self._engine_checks[id(session)] = result.describe()
            return session
        if CPU not in allowed:
            raise SessionError(
                f"{result.describe()}; the bundle does not allow {CPU} to fall back to"
            )
        log.warning("running CPU FP32 instead: %s", result.describe())
        reference.warm_up(self.config.warmup_runs)
        self._engine_checks[id(reference)] = f"fell back to CPU FP32: {result.describe()}"
        return reference

    def install_first(self, bundle_dir: Path) -> None:
        """Put a first verified bundle into an empty robot (slot a, committed)."""
        choice = self.slots.install_first(Path(bundle_dir))
        self._commit_counter(choice.bundle)

    def _commit_counter(self, verified: VerifiedBundle) -> None:
        m = verified.manifest
        self.counters.commit(m.name, m.sequence, verified.root_digest)

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self, *, first_bundle: Path | None = None) -> None:
        sys.setswitchinterval(self.config.gil_switch_interval_ms / 1000.0)
        rt = self.config.realtime_priority
        if rt is not None:
            # Every thread of this process takes the GIL, so every one must be real-time:
            # a normal-priority thread preempted while holding the GIL would stall the
            # loop. Threads started from here on (gRPC workers) inherit this policy; the
            # loop and its watchdog run one level higher.
            make_thread_realtime(max(1, rt - 1))
        if self.config.lock_memory:
            lock_memory()
        self.layout.ensure()
        self._lock.acquire()
        own_adapter = self._adapter is None
        try:
            # The robot link first: a wrong adapter setting must not install anything.
            if self._adapter is None:
                self._adapter = load_adapter(self.config.adapter, self.config.adapter_options)
            if first_bundle is not None and self.slots.state().last_good is None:
                self.install_first(first_bundle)
            choice = self.slots.boot()
            active = self.load(choice.bundle, choice.slot)
            if not choice.trial:
                self._catch_up_counter(choice)
                self._last_good = active
            else:
                self._candidate = choice.bundle
            self.loop = ControlLoop(
                self._adapter,
                active,
                rate_hz=self.config.rate_hz,
                watchdog=self.config.watchdog,
                spin_us=self.config.spin_us,
                realtime_priority=self.config.realtime_priority,
                loop_cpus=tuple(self.config.loop_cpus) if self.config.loop_cpus else None,
            )
            self._state = RuntimeState.ACTIVATED if choice.trial else RuntimeState.RUNNING
            last = self.slots.state().last_failure
            self._failure = Failure(Reason.BOOT_FALLBACK, last) if last else None
            self.recorder = self._start_recorder()
            self.loop.recorder = self.recorder
            self.loop.start()
            self._report_scheduling(self.loop)
            if self._serve:
                from runtime.control_server import serve

                self._server = serve(self, self.layout.runtime_socket)
        except BaseException:
            if self.loop is not None:
                self.loop.stop()
            if self.recorder is not None:
                self.recorder.stop()
            if own_adapter and self._adapter is not None:
                self._adapter.close()
                self._adapter = None
            self._lock.release()
            raise
        log.info(
            "runtime started",
            extra={
                "policy": active.label,
                "slot": choice.slot,
                "provider": active.session.provider,
            },
        )

    def _start_recorder(self) -> FlightRecorder | None:
        """The flight recorder, if enabled and its MCAP writer is installed."""
        rc = self.config.recording
        if not rc.enabled:
            return None
        if importlib.util.find_spec("mcap") is None:
            log.warning(
                "flight recorder off: the mcap package is not installed "
                "(install edgeflux[device], or set [runtime.recording] enabled = false)"
            )
            return None
        recorder = FlightRecorder(
            self.layout.recordings,
            quota_bytes=int(rc.quota_mb * 1024 * 1024),
            segment_s=rc.segment_s,
            keep_before_s=rc.keep_before_s,
            keep_after_s=rc.keep_after_s,
        )
        recorder.start()
        return recorder

    def _report_scheduling(self, loop: ControlLoop) -> None:
        """Warn at start-up when the loop thread did not get real-time priority."""
        deadline = time.monotonic() + 5.0
        while loop.scheduling is None and loop.running and time.monotonic() < deadline:
            time.sleep(0.001)  # the loop thread sets it before its first tick
        if loop.scheduling is not None:
            warn_unless_realtime(loop.scheduling)

    def _catch_up_counter(self, choice: BootChoice) -> None:
        m = choice.bundle.manifest
        committed = self.counters.committed(m.name)
        if committed is None or committed < m.sequence:
            self._commit_counter(choice.bundle)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._stop_requested.set()
        if self._server is not None:
            self._server.stop(grace=0.5).wait(2)
            self._server = None
            self.layout.runtime_socket.unlink(missing_ok=True)
        if self.loop is not None:
            if self.loop.error is not None and self.recorder is not None:
                self.recorder.mark("fault", f"control loop died: {self.loop.error}")
            self.loop.stop()
        if self.recorder is not None:
            self.recorder.stop()
        if self._adapter is not None:
            self._adapter.close()
        self._state = RuntimeState.STOPPED
        self._lock.release()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until `stop()`, a signal, or the loop dying; True unless timed out.

        After it returns, `loop_error` says whether the loop died (the caller stops
        the service either way)."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        notifier = SystemdNotifier()
        active = self.status().active
        notifier.ready(f"running {active.label}" if active is not None else "running")
        last_ticks, next_pet = -1, 0.0
        while True:
            step = 0.25 if end is None else min(0.25, max(0.0, end - time.monotonic()))
            if self._stop_requested.wait(step) or self.loop_error is not None:
                notifier.stopping()
                return True
            if end is not None and time.monotonic() >= end:
                notifier.stopping()
                return False
            interval = notifier.watchdog_interval_s
            if interval is not None and time.monotonic() >= next_pet and self.loop is not None:
                # Pet systemd's watchdog only while the control loop makes progress.
                ticks = self.loop.snapshot().ticks
                if ticks != last_ticks:
                    notifier.watchdog()
                    last_ticks, next_pet = ticks, time.monotonic() + interval

    @property
    def loop_error(self) -> BaseException | None:
        """Why the control loop thread died, if it did."""
        return self.loop.error if self.loop is not None else None

    def request_stop(self) -> None:
        """Ask `wait()` to return (safe from a signal handler); the caller then stops."""
        self._stop_requested.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: stopping", signum)
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # ---- control operations (RuntimeControl) -------------------------------------------

    @property
    def adapter(self) -> RobotAdapter | None:
        return self._adapter

    def _need_loop(self) -> ControlLoop:
        if self.loop is None or not self.loop.running:
            raise ControlError("the control loop is not running")
        return self.loop

    def status(self) -> StatusInfo:
        loop = self.loop
        slots = self.slots.state()
        active = loop.policy if loop is not None else None
        sched = loop.scheduling if loop is not None else None
        return StatusInfo(
            state=self._state,
            active=active,
            pending=self._staged,
            last_good=self._last_good,
            slots=slots,
            provider=active.session.provider if active is not None else "",
            metrics=loop.snapshot() if loop is not None else empty_metrics(),
            anti_rollback=self._safe_counters(),
            failure=self._failure,
            swaps=loop.swaps if loop is not None else 0,
            scheduling=sched.describe() if sched is not None else "",
            realtime=sched is not None and sched.realtime,
            engine_check=(
                self._engine_checks.get(id(active.session), "") if active is not None else ""
            ),
        )

    def _safe_counters(self) -> dict[str, int]:
        try:
            return self.counters.all()
        except Exception as exc:  # a corrupt counter file must not break status
            log.error("anti-rollback store unreadable: %s", exc)
            return {}

    def stage(self, bundle_dir: Path) -> tuple[LoadedPolicy, float]:
        """Verify, copy into the inactive slot, load and warm; the loop keeps running."""
        with self._ops:
            self._need_loop()
            if self._state in (RuntimeState.ACTIVATED, RuntimeState.HEALTH_WINDOW):
                raise ControlError(
                    "an activated bundle is not committed yet; commit or roll back first"
                )
            t0 = time.perf_counter()
            rt = self.config.realtime_priority
            # A new stage replaces (and first forgets) whatever was staged before.
            self._staged = None
            if self._state == RuntimeState.STAGED:
                self._state = RuntimeState.RUNNING
            with realtime_thread(max(1, rt - 1) if rt is not None else None):
                slot, verified = self.slots.stage(Path(bundle_dir))
                self._staged = self.load(verified, slot)
                self._candidate = verified
            self._state = RuntimeState.STAGED
            self._failure = None
            return self._staged, (time.perf_counter() - t0) * 1e3

    def shadow(self, ticks: int) -> tuple[LoadedPolicy, ShadowResult]:
        with self._ops:
            loop = self._need_loop()
            if self._staged is None or self._state != RuntimeState.STAGED:
                raise ControlError("nothing staged to shadow; stage a bundle first")
            candidate = self._staged
            self._state = RuntimeState.SHADOWING
            try:
                return candidate, loop.shadow(candidate, ticks)
            finally:
                self._state = RuntimeState.STAGED

    def activate(self, health_window_ticks: int = 0) -> StatusInfo:
        """Switch to the staged bundle on a tick where the robot allows it; with
        `health_window_ticks`, then judge it over that many ticks (:meth:`health_window`)."""
        with self._ops:
            loop = self._need_loop()
            if self._staged is None or self._state != RuntimeState.STAGED:
                raise ControlError("nothing staged to activate; stage a bundle first")
            candidate = self._staged
            self._previous = loop.policy
            self.slots.mark_activated()  # persisted before the switch (kill -9 safe)
            try:
                loop.swap(candidate, timeout_s=self.config.swap_timeout_s)
            except LoopError as exc:
                self.slots.rollback(f"switch failed: {exc}")
                self._staged = None  # stage again when the robot allows a switch
                self._failure = Failure(Reason.UNSAFE_TO_SWITCH, str(exc))
                self._state = RuntimeState.RUNNING
                raise ControlError(str(exc), Reason.UNSAFE_TO_SWITCH) from exc
            self._staged = None
            self._state = RuntimeState.ACTIVATED
        if health_window_ticks > 0:
            return self.health_window(health_window_ticks)
        return self.status()

    def health_window(self, ticks: int) -> StatusInfo:
        """Judge the activated candidate over `ticks` ticks — the one place health is
        judged; an unhealthy candidate is rolled back here, before this returns."""
        with self._ops:
            loop = self._need_loop()
            if self._state != RuntimeState.ACTIVATED:
                raise ControlError(
                    f"no activated bundle to watch (state {self._state}); activate one first"
                )
            self._state = RuntimeState.HEALTH_WINDOW
            try:
                limits = HealthLimits(
                    self.config.health_max_fallback_rate, self.config.health_max_miss_rate
                )
                verdict = health.watch(loop, ticks, limits)
            except BaseException:
                self._state = RuntimeState.ACTIVATED
                raise
            if verdict is not None:
                self._rollback_to(self._previous, verdict)
            else:
                self._state = RuntimeState.ACTIVATED
            return self.status()

    def _rollback_to(self, target: LoadedPolicy | None, failure: Failure) -> None:
        loop = self._need_loop()
        self.slots.rollback(failure.detail)  # persisted before the switch back
        if target is None:
            choice = self.slots.boot()
            target = self.load(choice.bundle, choice.slot)
        loop.swap(target, timeout_s=self.config.swap_timeout_s)
        self._last_good = target
        self._staged = None
        self._state = RuntimeState.ROLLED_BACK
        self._failure = failure
        if self.recorder is not None:
            self.recorder.mark("fault", f"rolled back to {target.label}: {failure}")
        log.warning("rolled back to %s: %s", target.label, failure)

    def commit(self) -> StatusInfo:
        with self._ops:
            loop = self._need_loop()
            if self._state != RuntimeState.ACTIVATED:
                raise ControlError(
                    f"nothing to commit (state {self._state}); activate a staged bundle first"
                )
            if self._candidate is None:
                raise ControlError("nothing to commit: the activated bundle is unknown")
            self.slots.commit(self._candidate, self._commit_counter)
            self._candidate = None
            self._last_good = loop.policy
            self._state = RuntimeState.RUNNING
            self._failure = None
            return self.status()

    def rollback(self, failure: Failure | None = None) -> StatusInfo:
        """Discard a staged bundle, or switch back from an activated, uncommitted one."""
        failure = failure or Failure(Reason.ROLLBACK_REQUESTED, "rolled back by request")
        with self._ops:
            self._need_loop()
            if self._state == RuntimeState.STAGED:
                self.slots.rollback(failure.detail)
                self._staged = None
                self._state = RuntimeState.RUNNING
                self._failure = failure
            elif self._state == RuntimeState.ACTIVATED:
                self._rollback_to(self._last_good, failure)
            else:
                raise ControlError(
                    f"nothing to roll back (state {self._state}); only a staged or an "
                    "activated, uncommitted bundle can be rolled back"
                )
            return self.status()
