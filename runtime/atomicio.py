"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every piece of persistent state in EdgeFlux (slot state, anti-rollback counters,
update state, spool metadata, checkpoints) is written through here:

1. write to a temporary file in the same directory (same filesystem),
2. flush + ``fsync`` the file,
3. ``os.replace`` it over the destination (atomic on POSIX),
4. ``fsync`` the directory so the rename itself survives a power loss.

A crash before step 3 leaves the destination untouched and at most a stray
``.<name>.tmp-*`` file, which :func:`remove_stale_temps` clears.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_writer",
    "fsync_dir",
    "remove_stale_temps",
]

_TMP_MARK = ".tmp-"


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename or create inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Yield a binary file; on a clean exit it atomically becomes `path`.

    On an exception nothing at `path` changes and the temporary file is removed.
    `mode` is applied before the rename, so a secret (mode 0o600) is never visible
    with wider permissions.
    """
    dest = Path(path)
    directory = dest.parent if str(dest.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}{_TMP_MARK}", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(directory)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Atomically replace `path` with `data`."""
    with atomic_writer(path, mode) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, mode: int = 0o644) -> None:
    """Atomically replace `path` with `text` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, mode: int = 0o644) -> None:
    """Atomically replace `path` with `obj` as indented, key-sorted JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", mode)


def remove_stale_temps(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete temporaries left by writers that crashed before their rename; return them."""
    removed = []
    for entry in Path(directory).iterdir():
        if entry.name.startswith(".") and _TMP_MARK in entry.name and entry.is_file():
            entry.unlink()
            removed.append(entry)
    return removed
