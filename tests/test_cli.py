"""The `edgeflux` root command: fast help, lazy groups."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from edgeflux import __version__
from edgeflux.cli import GROUPS, root

EXPECTED_GROUPS = {
    "bundle",
    "runtime",
    "agent",
    "cloud",
    "distill",
    "attest",
    "rollout",
    "flash",
    "robot",
    "tui",
    "demo",
}


def test_help_lists_every_group() -> None:
    result = CliRunner().invoke(root, ["--help"])
    assert result.exit_code == 0, result.output
    for name in EXPECTED_GROUPS:
        assert f"  {name} " in result.output
    assert set(GROUPS) == EXPECTED_GROUPS


def test_version() -> None:
    result = CliRunner().invoke(root, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_unknown_command_is_an_error() -> None:
    result = CliRunner().invoke(root, ["frobnicate"])
    assert result.exit_code == 2
    assert "No such command" in result.output


def test_bad_log_level_is_rejected() -> None:
    result = CliRunner().invoke(root, ["--log-level", "loud", "demo", "--help"])
    assert result.exit_code == 2
    assert "loud" in result.output


def test_help_is_fast_and_imports_no_component() -> None:
    exe = Path(sys.executable).with_name("edgeflux")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edgeflux.cli"]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        out = subprocess.run([*cmd, "--help"], capture_output=True, text=True, check=True)
        best = min(best, time.perf_counter() - start)
    assert "bundle" in out.stdout
    assert best < 0.5 * (2 if os.environ.get("CI") else 1), f"--help took {best:.3f}s"
    code = (
        "import sys; from edgeflux.cli import root\n"
        "try:\n    root.main(['--help'], standalone_mode=False)\nexcept SystemExit: pass\n"
        "heavy = [m for m in ('torch','onnxruntime','grpc','textual','sqlalchemy','runtime',"
        "'cloud','fleet') if m in sys.modules]\nprint(heavy)"
    )
    heavy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert heavy.stdout.strip().endswith("[]"), heavy.stdout


def test_json_logging_is_one_line_per_event(capfd: object) -> None:
    import json
    import logging

    from edgeflux._logging import setup_logging

    setup_logging("json", "info")
    logging.getLogger("edgeflux.test").info("hello\nworld", extra={"device": "r1", "n": 3})
    err = capfd.readouterr().err  # type: ignore[attr-defined]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["msg"] == "hello\nworld"
    assert record["device"] == "r1" and record["n"] == 3 and record["level"] == "info"


def test_logging_follows_the_current_stderr(capfd: object) -> None:
    """A stream swapped in and closed (as a test runner does) is never written again."""
    import io
    import logging
    import sys

    from edgeflux._logging import setup_logging

    swapped = io.StringIO()
    real = sys.stderr
    sys.stderr = swapped
    try:
        setup_logging("text", "info")
        logging.getLogger("edgeflux.test").info("into the swapped stream")
    finally:
        sys.stderr = real
    swapped.close()
    logging.getLogger("edgeflux.test").info("after the swap")
    logging.getLogger("alembic.runtime.migration").info("migration chatter")
    err = capfd.readouterr().err  # type: ignore[attr-defined]
    assert "after the swap" in err
    assert "Logging error" not in err
    assert "migration chatter" not in err
