"""The README is executable: its operator session runs, line by line, against a local
plane and a `dir:` robot, and this test fails when the README and the CLI drift apart.

What the test changes, and only this (the `BUDGET` table): free ports instead of the
defaults, small training and campaign budgets, and shorter robot windows so the second
version commits in seconds. The TUI (interactive) is checked with `--help`, which still
parses every option the README gives it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MARKER = "A typical operator session, on this machine"

TINY_DISTILL = ["--eval-episodes", "3", "--rounds", "2", "--envs-per-round", "2", "--epochs", "3"]
FAST_ROBOT = [
    "--runtime-option", "warmup_runs=2",
    "--agent-option", "telemetry_period_s=0.5",
    "--agent-option", "sample_period_s=0.25",
    "--agent-option", "hint_min_interval_s=0",
    "--agent-option", "shadow_ticks=20",
    "--agent-option", "health_window_ticks=20",
]  # fmt: skip


@dataclass
class Step:
    argv: list[str]
    background: bool
    line: str


def readme_session(text: str) -> list[Step]:
    """The commands of the first ```bash block after MARKER (continuations joined,
    comments dropped, a trailing `&` meaning: runs in the background)."""
    start = text.index(MARKER)
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert block, f"no ```bash block after {MARKER!r} in README.md"
    steps = []
    for line in block.group(1).replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if not argv:
            continue
        background = argv[-1] == "&"
        steps.append(Step(argv[:-1] if background else argv, background, line.strip()))
    return steps


def _tiny_campaign(src: Path, dst: Path) -> None:
    """The README's campaign file with small episode counts (same tasks, same keys)."""
    text = re.sub(r"(?m)^episodes = \d+", "episodes = 4\ncalibration_episodes = 4", src.read_text())
    text = re.sub(r"(?m)^workers = \d+", "workers = 1", text)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(text + "\n")


@pytest.mark.slow
def test_the_readme_operator_session_runs(tmp_path: Path) -> None:
    steps = readme_session(README.read_text())
    assert [s.argv[0] for s in steps] == ["edgeflux"] * len(steps), "every line is edgeflux"
    groups = [" ".join(s.argv[1:3]) for s in steps]
    for needed in ("cloud init", "cloud up", "distill run", "attest run", "attest get",
                   "flash --device", "robot start", "cloud push", "runtime status"):  # fmt: skip
        assert any(g.startswith(needed) for g in groups), f"the session lost `{needed}`"

    grpc_port, broker_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "EDGEFLUX_CLOUD_GRPC_PORT": str(grpc_port),
        "EDGEFLUX_CLOUD_EMBEDDED_BROKER_PORT": str(broker_port),
    }
    _tiny_campaign(REPO / "examples" / "campaign.toml", tmp_path / "examples" / "campaign.toml")
    logs = tmp_path / "logs"
    logs.mkdir()
    background: list[tuple[str, subprocess.Popen[bytes]]] = []

    def adapt(argv: list[str]) -> list[str]:
        args = [
            a.replace("127.0.0.1:7443", f"127.0.0.1:{grpc_port}").replace(
                "127.0.0.1:1883", f"127.0.0.1:{broker_port}"
            )
            for a in argv[1:]
        ]
        if args[:2] == ["distill", "run"]:
            args += TINY_DISTILL
        if args[:1] == ["flash"]:
            args += FAST_ROBOT
        if args[:1] == ["tui"]:
            args += ["--help"]
        return [sys.executable, "-m", "edgeflux.cli", *args]

    def run(step: Step, i: int) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            adapt(step.argv), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        (logs / f"{i:02d}.log").write_text(f"$ {step.line}\n{done.stdout}\n{done.stderr}")
        assert "Traceback" not in done.stderr, f"{step.line}\n{done.stderr[-3000:]}"
        return done

    def robot_active() -> str:
        done = subprocess.run(
            adapt(["edgeflux", "runtime", "status", "--root", "robots/robot-7", "--json"]),
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            return ""
        bundle = json.loads(done.stdout)["active"]["bundle"]
        return f"{bundle.get('name')} {bundle.get('version')}"

    def online(device: str) -> bool:
        done = subprocess.run(
            adapt(["edgeflux", "cloud", "devices", "--home", "plane", "--json"]),
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        rows = json.loads(done.stdout)["devices"] if done.returncode == 0 else []
        return any(r.get("id") == device and r.get("online") for r in rows)

    try:
        for i, step in enumerate(steps):
            what = " ".join(step.argv[1:3])
            if step.background:
                log = (logs / f"{i:02d}-{step.argv[1]}.log").open("wb")
                proc = subprocess.Popen(
                    adapt(step.argv), cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
                )
                background.append((step.line, proc))
                if what.startswith("cloud up"):
                    wait_until(lambda p=proc: _listening(grpc_port) or p.poll() is not None, 60,
                               "the control plane listening")  # fmt: skip
                    assert proc.poll() is None, _tail(logs)
                if what.startswith("robot start"):
                    wait_until(lambda p=proc: online("robot-7") or p.poll() is not None, 120,
                               "robot-7 online in the plane")  # fmt: skip
                    assert proc.poll() is None, _tail(logs)
                continue
            if what.startswith("runtime status"):
                # The update takes a moment: the README shows where it ends.
                try:
                    wait_until(lambda: robot_active() == "pendulum 0.2.0", 180,
                               "robot-7 running pendulum 0.2.0")  # fmt: skip
                except TimeoutError:
                    pytest.fail(_tail(logs, 8000))
            done = run(step, i)
            allowed = {0, 3} if what.startswith("attest run") else {0}  # 3: not attested
            assert done.returncode in allowed, f"{step.line}\n{done.stdout}\n{done.stderr}"
            if what.startswith("attest get"):
                assert done.stdout.startswith("Parity attestation: "), done.stdout
                assert "signature: verified" in done.stdout
            if what.startswith("runtime status"):
                assert "pendulum 0.2.0 (sequence 2)" in done.stdout, done.stdout
    finally:
        for line, proc in reversed(background):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                pytest.fail(f"`{line}` did not stop on SIGTERM")
            assert code == 0, f"`{line}` exited {code}\n{_tail(logs)}"


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(logs: Path, n: int = 4000) -> str:
    out = []
    for p in sorted(logs.iterdir()):
        out.append(f"--- {p.name}\n{p.read_text(errors='replace')[-n:]}")
    return "\n".join(out)[-3 * n :]


def test_the_session_parser_reads_continuations_comments_and_background() -> None:
    text = f"{MARKER}:\n\n```bash\nedgeflux a \\\n    --b c   # note\nedgeflux up &   # bg\n```\n"
    steps = readme_session(text)
    assert [(s.argv, s.background) for s in steps] == [
        (["edgeflux", "a", "--b", "c"], False),
        (["edgeflux", "up"], True),
    ]
