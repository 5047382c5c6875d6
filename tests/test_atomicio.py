"""Atomic writes survive a crash between write and rename."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.atomicio import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_writer,
    remove_stale_temps,
)


def test_write_then_read(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_json(target, {"active": "a", "n": 1})
    assert json.loads(target.read_text()) == {"active": "a", "n": 1}
    atomic_write_json(target, {"active": "b"})
    assert json.loads(target.read_text()) == {"active": "b"}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_secret_mode_is_applied_before_rename(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    atomic_write_bytes(target, b"secret", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_exception_inside_writer_leaves_old_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_writer(target) as fh:
        fh.write(b"new but incomplete")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_process_killed_between_write_and_rename_keeps_old_file(tmp_path: Path) -> None:
    """A real crash: the child dies (os._exit) right where the rename would happen."""
    target = tmp_path / "state.json"
    target.write_text('{"generation": 1}')
    code = f"""
import os
import runtime.atomicio as aio
def crash(src, dst):
    os._exit(9)
os.replace = crash
aio.atomic_write_json({str(target)!r}, {{"generation": 2}})
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == 9
    assert json.loads(target.read_text()) == {"generation": 1}
    stale = [p for p in tmp_path.iterdir() if p.name != "state.json"]
    assert len(stale) == 1 and json.loads(stale[0].read_text()) == {"generation": 2}
    assert remove_stale_temps(tmp_path) == stale
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_fsync_is_called_for_file_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    atomic_write_bytes(tmp_path / "x", b"1")
    assert len(calls) == 2  # the file, then its directory
