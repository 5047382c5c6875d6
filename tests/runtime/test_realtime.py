"""Real-time scheduling: what the loop thread asks for, what it gets, and what it reports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from fleet.telemetry import HostMetrics, make_point
from runtime.adapters.null import NullAdapter
from runtime.config import RuntimeConfig
from runtime.control_client import RuntimeControlClient
from runtime.layout import RobotLayout
from runtime.loop import ControlLoop
from runtime.realtime import Scheduling, thread_scheduling
from runtime.service import RuntimeService
from tests.runtime import _models
from tests.runtime.conftest import ACT, OBS, BundleFactory, loaded
from tests.servers import wait_until

REPO = Path(__file__).resolve().parents[2]
FAST = {"rate_hz": 100, "deadline_ms": 9}


def _fifo_allowed() -> bool:
    got: list[int] = []

    def probe() -> None:  # a throwaway thread: the test process keeps its own policy
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            got.append(os.sched_getscheduler(0))
        except OSError:
            got.append(-1)

    t = threading.Thread(target=probe)
    t.start()
    t.join(5)
    return got == [os.SCHED_FIFO]


def test_describe_says_what_was_had_and_why_not() -> None:
    fifo = Scheduling("SCHED_FIFO", 50, (3,), True)
    assert fifo.realtime and fifo.describe() == "SCHED_FIFO 50, memory locked, CPUs 3"
    other = Scheduling("SCHED_OTHER", 0, (), False, "real-time priority 50 refused: EPERM")
    assert not other.realtime
    assert other.describe() == (
        "SCHED_OTHER, memory not locked (real-time priority 50 refused: EPERM)"
    )


def test_loop_thread_runs_fifo_pinned_and_reports_it() -> None:
    if not _fifo_allowed():
        pytest.skip("this machine does not allow SCHED_FIFO (no CAP_SYS_NICE, rtprio 0)")
    loop = ControlLoop(
        NullAdapter(OBS), loaded(_models.mlp(OBS, ACT)), realtime_priority=7, loop_cpus=(0,)
    )
    loop.start()
    try:
        wait_until(lambda: loop.counters.ticks >= 3, 10, "the loop to tick")
    finally:
        loop.stop()
    got = loop.scheduling
    assert got is not None
    assert (got.policy, got.priority, got.cpus, got.refused) == ("SCHED_FIFO", 7, (0,), "")
    assert thread_scheduling().policy == "SCHED_OTHER"  # the caller's thread is untouched


def test_loop_without_realtime_asked_reports_normal_scheduling() -> None:
    loop = ControlLoop(NullAdapter(OBS), loaded(_models.mlp(OBS, ACT)), watchdog=False)
    loop.run(ticks=3)
    assert loop.scheduling is not None and not loop.scheduling.realtime
    assert loop.scheduling.refused == ""


def test_service_status_reports_fifo_over_the_control_socket(
    layout: RobotLayout, make_bundle: BundleFactory
) -> None:
    if not _fifo_allowed():
        pytest.skip("this machine does not allow SCHED_FIFO (no CAP_SYS_NICE, rtprio 0)")
    config = RuntimeConfig(adapter="null", adapter_options={"obs_dim": OBS}, realtime_priority=9)
    svc = RuntimeService(layout, config)
    bundle = make_bundle(control=FAST)
    # Started from a throwaway thread: start() makes its calling thread real-time too.
    starter = threading.Thread(target=lambda: svc.start(first_bundle=bundle))
    starter.start()
    starter.join(60)
    try:
        with RuntimeControlClient(layout.runtime_socket, timeout_s=10) as c:
            st = c.status()
    finally:
        svc.stop()
    assert st.realtime
    assert st.scheduling.startswith("SCHED_FIFO 9, memory not locked"), st.scheduling


@pytest.mark.skipif(
    shutil.which("setpriv") is None or os.geteuid() != 0,
    reason="needs root and setpriv to run the runtime without CAP_SYS_NICE",
)
def test_runtime_without_the_privilege_runs_warns_and_reports_why(
    layout: RobotLayout, make_bundle: BundleFactory
) -> None:
    layout.runtime_config.write_text(
        "[runtime]\nrealtime_priority = 50\nlock_memory = true\nwarmup_runs = 2\n"
        f'adapter = "null"\nadapter_options = {{ obs_dim = {OBS} }}\n'
    )
    # Root without CAP_SYS_NICE / CAP_IPC_LOCK and with rtprio and memlock limits of 0:
    # what an unprivileged robot account has.
    cmd = [
        "setpriv", "--bounding-set", "-sys_nice,-ipc_lock", "--inh-caps", "-sys_nice,-ipc_lock",
        "prlimit", "--rtprio=0", "--memlock=65536",
        sys.executable, "-m", "edgeflux.cli", "runtime", "run", "--root", str(layout.root),
        "--bundle", str(make_bundle(control=FAST)),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:

        def status() -> object:
            if proc.poll() is not None:
                raise AssertionError(f"runtime exited {proc.returncode}: {proc.stderr.read()}")  # type: ignore[union-attr]
            if not layout.runtime_socket.exists():
                return None
            try:
                with RuntimeControlClient(layout.runtime_socket, timeout_s=2) as c:
                    return c.status() if c.status().metrics.ticks > 0 else None
            except Exception:
                return None

        wait_until(lambda: status() is not None, 60, "the unprivileged runtime to tick")
        st = status()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert not st.realtime  # type: ignore[attr-defined]
    text = st.scheduling  # type: ignore[attr-defined]
    assert text.startswith("SCHED_OTHER, memory not locked"), text
    assert "real-time priority 50 refused" in text and "cannot lock memory" in text
    assert "runs without real-time priority" in err and "LimitRTPRIO" in err


def test_telemetry_points_carry_the_scheduling_class() -> None:
    import datetime as dt

    p = make_point(
        dt.datetime.now(dt.UTC), None, HostMetrics(), scheduling="SCHED_FIFO 50", realtime=True
    )
    assert (p.scheduling, p.realtime) == ("SCHED_FIFO 50", True)
    assert np.isfinite(p.cpu_percent)
