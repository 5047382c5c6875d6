"""`edgeflux robot start`: start a flashed robot — its runtime and its fleet agent, supervised.

Usage::

    edgeflux robot start                       # on the robot itself (systemd units)
    edgeflux robot start --root ./robots/r1    # a robot flashed to a directory (dir:)

On a robot booted with systemd (root ``/``) it enables and starts the units the flash
wrote (``edgeflux-install``, ``edgeflux-runtime``, ``edgeflux-agent``); systemd then
restarts them and starts them at every boot.

Anywhere else it is a foreground supervisor: it runs the robot's offline installer
(a no-op when the robot's venv already holds what the flash asked for), starts the
runtime, waits for its control socket, starts the agent, prefixes both programs'
output with their names, restarts a program that exits (as ``Restart=always`` would)
and gives up when one keeps failing. Ctrl-C or SIGTERM stops the agent, then the
runtime.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import click

from runtime.layout import RobotLayout

__all__ = ["Program", "Supervisor", "robot"]

UNITS = ("edgeflux-install.service", "edgeflux-runtime.service", "edgeflux-agent.service")
# Restart policy of the flashed units: give up after this many exits in this window.
START_LIMIT_BURST = 5
START_LIMIT_INTERVAL_S = 60.0


@dataclass
class Program:
    """One supervised program: its name (the output prefix), argv, and restart delay."""

    name: str
    argv: list[str]
    restart_delay_s: float = 2.0
    popen: subprocess.Popen[bytes] | None = None
    exits: deque[float] = field(default_factory=lambda: deque(maxlen=START_LIMIT_BURST))
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))


class SupervisorError(RuntimeError):
    """A program kept failing (or never became ready); everything was stopped."""


class Supervisor:
    """Start programs in order, copy their output, restart them, stop them all on request."""

    def __init__(
        self,
        programs: Sequence[Program],
        *,
        env: dict[str, str],
        out: IO[str],
        ready: Callable[[Program], bool] = lambda p: True,
        ready_timeout_s: float = 60.0,
    ) -> None:
        self.programs = list(programs)
        self.env = env
        self.out = out
        self.ready = ready
        self.ready_timeout_s = ready_timeout_s
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    def say(self, name: str, line: str) -> None:
        with self._lock:
            self.out.write(f"{name:<8}| {line}\n")
            self.out.flush()

    def _spawn(self, prog: Program) -> None:
        prog.popen = subprocess.Popen(
            prog.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,  # our Ctrl-C is handled here, not by the children
        )
        stream = prog.popen.stdout
        assert stream is not None

        def copy() -> None:
            for raw in stream:
                line = raw.decode(errors="replace").rstrip("\n")
                prog.tail.append(line)
                self.say(prog.name, line)

        threading.Thread(target=copy, name=f"out-{prog.name}", daemon=True).start()
        self.say("robot", f"started {prog.name} (pid {prog.popen.pid})")

    def _wait_ready(self, prog: Program) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while not self.ready(prog):
            if self.stopping.is_set():
                return
            assert prog.popen is not None
            if prog.popen.poll() is not None:
                raise SupervisorError(
                    f"{prog.name} exited ({prog.popen.returncode}) before it was ready"
                    + (f": {prog.tail[-1]}" if prog.tail else "")
                )
            if time.monotonic() > deadline:
                raise SupervisorError(
                    f"{prog.name} was not ready within {self.ready_timeout_s:.0f}s"
                )
            time.sleep(0.1)

    def run(self) -> None:
        """Run until `stop()` (or a signal); raise SupervisorError when a program keeps failing."""
        try:
            for prog in self.programs:
                if self.stopping.is_set():
                    return
                self._spawn(prog)
                self._wait_ready(prog)
            while not self.stopping.wait(0.2):
                for prog in self.programs:
                    assert prog.popen is not None
                    code = prog.popen.poll()
                    if code is None:
                        continue
                    now = time.monotonic()
                    prog.exits.append(now)
                    if (
                        len(prog.exits) == START_LIMIT_BURST
                        and now - prog.exits[0] < START_LIMIT_INTERVAL_S
                    ):
                        raise SupervisorError(
                            f"{prog.name} exited {START_LIMIT_BURST} times within "
                            f"{START_LIMIT_INTERVAL_S:.0f}s (last exit {code}); giving up"
                            + (f": {prog.tail[-1]}" if prog.tail else "")
                        )
                    self.say("robot", f"{prog.name} exited ({code}); restarting")
                    if self.stopping.wait(prog.restart_delay_s):
                        return
                    self._spawn(prog)
        finally:
            self._stop_all()

    def stop(self) -> None:
        self.stopping.set()

    def _stop_all(self, grace_s: float = 10.0) -> None:
        for prog in reversed(self.programs):
            if prog.popen is not None and prog.popen.poll() is None:
                prog.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for prog in reversed(self.programs):
            if prog.popen is None:
                continue
            try:
                prog.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                prog.popen.kill()
                prog.popen.wait(5)
            self.say("robot", f"stopped {prog.name}")


def _edgeflux(layout: RobotLayout) -> tuple[list[str], dict[str, str]]:
    """The robot's own edgeflux (its venv, with nothing of ours on the path), or this one
    for a robot flashed without a wheelhouse."""
    exe = layout.opt / "venv" / "bin" / "edgeflux"
    if exe.is_file():
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return [str(exe)], env
    return [sys.executable, "-m", "edgeflux.cli"], dict(os.environ)


def _install(layout: RobotLayout) -> None:
    script = layout.opt / "install.sh"
    if not script.is_file():
        return
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # Streamed as it runs: a first install takes minutes on a small robot.
    with subprocess.Popen(
        ["sh", str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            click.echo(f"{'install':<8}| {line.rstrip()}")
    if proc.returncode != 0:
        raise click.ClickException(
            f"{script} failed (exit {proc.returncode}); the robot was not started"
        )


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def _start_units(root: Path) -> None:
    present = [u for u in UNITS if (root / "etc/systemd/system" / u).is_file()]
    if not present:
        raise click.ClickException(
            f"{root / 'etc/systemd/system'} holds no EdgeFlux units: this robot was not flashed"
        )
    for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", *present]):
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise click.ClickException(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    click.echo(
        f"started {', '.join(present)} (enabled at boot); "
        "follow them with `journalctl -fu edgeflux-runtime -u edgeflux-agent`"
    )


@click.group()
def robot() -> None:
    """A flashed robot: start its runtime and agent."""


@robot.command("start")
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/"),
    show_default=True,
    help="The robot's root: / on the robot, or the directory a dir: flash wrote.",
)
@click.option(
    "--foreground",
    is_flag=True,
    help="Supervise in the foreground even where systemd runs (root /).",
)
def start_cmd(root: Path, foreground: bool) -> None:
    """Start the runtime and the agent of the robot at ROOT, supervised."""
    layout = RobotLayout.at(root)
    for need, what in (
        (layout.runtime_config, "runtime configuration"),
        (layout.agent_config, "agent configuration"),
    ):
        if not need.is_file():
            raise click.ClickException(
                f"{root} is not a flashed robot: no {what} at {need}; flash it first "
                f"(edgeflux flash --target dir:{root} ...)"
            )
    if root.resolve() == Path("/") and _systemd_running() and not foreground:
        _start_units(Path("/"))
        return
    _install(layout)
    base, env = _edgeflux(layout)
    socket = layout.runtime_socket
    sup = Supervisor(
        [
            Program("runtime", [*base, "runtime", "run", "--root", str(root)], 2.0),
            Program("agent", [*base, "agent", "run", "--root", str(root)], 5.0),
        ],
        env=env,
        out=sys.stdout,
        ready=lambda p: p.name != "runtime" or socket.exists(),
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        sup.say("robot", f"{signal.Signals(signum).name}: stopping")
        sup.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        sup.run()
    except SupervisorError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
