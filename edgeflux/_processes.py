"""Background processes that the demo starts, watches and always stops.

Each process logs to its own file. `ProcessGroup` stops everything it started on
exit — SIGTERM in reverse start order, then SIGKILL after a grace period — also
when the orchestrator is interrupted with Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = ["ManagedProcess", "ProcessError", "ProcessGroup", "edgeflux_command"]


class ProcessError(RuntimeError):
    """A background process died or a condition on it was not met in time."""


def edgeflux_command(*args: str) -> list[str]:
    """Run `edgeflux ARGS` with this interpreter (works in any venv, no PATH needed)."""
    return [sys.executable, "-m", "edgeflux.cli", *args]


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ProcessGroup:
    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.env = {**os.environ, **(env or {})}
        self.procs: list[ManagedProcess] = []

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(self, name: str, argv: Sequence[str], cwd: Path | None = None) -> ManagedProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        fh = log.open("ab")
        popen = subprocess.Popen(
            list(argv),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=cwd,
            start_new_session=True,  # Ctrl-C reaches only us
        )
        fh.close()
        proc = ManagedProcess(name, popen, log)
        self.procs.append(proc)
        return proc

    def run(
        self, name: str, argv: Sequence[str], timeout_s: float, ok: Collection[int] = (0,)
    ) -> str:
        """Run a command to completion (logged); return its stdout; raise unless its
        exit status is in `ok`."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        try:
            done = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                env=self.env,
                timeout=timeout_s,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise ProcessError(
                f"{name} did not finish within {timeout_s:.0f}s (log: {log})"
            ) from exc
        log.write_text(f"$ {' '.join(argv)}\n{done.stdout}\n--- stderr ---\n{done.stderr}")
        if done.returncode not in ok:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-20:])
            raise ProcessError(f"{name} failed (exit {done.returncode}); log: {log}\n{tail}")
        return done.stdout

    def wait_for(
        self,
        condition: Callable[[], bool],
        timeout_s: float,
        what: str,
        watch: Sequence[ManagedProcess] = (),
    ) -> None:
        """Poll `condition` until true; fail early if a watched process dies."""
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while True:
            for proc in watch:
                if not proc.alive():
                    raise ProcessError(
                        f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}; "
                        f"log {proc.log}:\n{proc.log_tail()}"
                    )
            try:
                if condition():
                    return
            except Exception:  # the thing polled may not be up yet
                pass
            if time.monotonic() > deadline:
                raise ProcessError(f"timed out after {timeout_s:.0f}s waiting for {what}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def stop_all(self, grace_s: float = 10.0) -> None:
        for proc in reversed(self.procs):
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in reversed(self.procs):
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(5)
        self.procs.clear()
