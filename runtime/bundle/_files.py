"""Walking and hashing a bundle directory without following links.

Both the signer and the verifier use these, so "the file set" means the same on
both sides: regular files only, relative POSIX names, every symlink, hardlink,
device, FIFO or socket refused by name.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from runtime.bundle._oms import SIGNATURE_NAME
from runtime.bundle.errors import BundleFileSetError

__all__ = ["CHUNK", "ProgressFn", "hash_open_file", "open_regular", "walk_bundle"]

CHUNK = 1 << 20  # 1 MiB reads: large enough to amortise syscalls, small enough for a robot
# Reads of CHUNK go straight into the caller's buffer; this one only serves the small
# reads of the ONNX metadata walk.
_FILE_BUFFER = 64 << 10
_MAX_FILES = 4096


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def walk_bundle(bundle_dir: Path) -> tuple[list[str], list[str]]:
    """(file names, directory names) below `bundle_dir`, excluding `model.sig`.

    Raises BundleFileSetError for anything that is not a regular file or directory,
    and for regular files with more than one hard link.
    """
    try:
        top = os.lstat(bundle_dir)
    except FileNotFoundError:
        raise BundleFileSetError(f"{bundle_dir}: no such bundle directory") from None
    if not stat.S_ISDIR(top.st_mode):
        raise BundleFileSetError(f"{bundle_dir}: is {_kind(top.st_mode)}, not a bundle directory")
    files: list[str] = []
    dirs: list[str] = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(bundle_dir / rel_dir if rel_dir else bundle_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                dirs.append(rel)
                stack.append(rel)
            elif stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    raise BundleFileSetError(
                        f"{bundle_dir}: {rel} has {st.st_nlink} hard links; bundle files must "
                        "be plain files with one link (copy it instead)"
                    )
                if rel != SIGNATURE_NAME:
                    files.append(rel)
            else:
                raise BundleFileSetError(
                    f"{bundle_dir}: {rel} is {_kind(st.st_mode)}; bundles hold regular files only"
                )
            if len(files) + len(dirs) > _MAX_FILES:
                raise BundleFileSetError(f"{bundle_dir}: more than {_MAX_FILES} entries")
    return sorted(files), sorted(dirs)


def open_regular(path: Path, where: str) -> BinaryIO:
    """Open without following a final symlink; the *opened* file must be regular, 1 link.

    Checking the open descriptor (not the path) closes the window between a check
    and the read in which the file could be swapped.
    """
    try:
        # O_NONBLOCK: opening a FIFO planted under a signed name must not hang the
        # verifier waiting for a writer (it has no effect on regular files).
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise BundleFileSetError(f"{where}: {path.name} is missing") from None
    except OSError as exc:
        raise BundleFileSetError(f"{where}: cannot open {path.name} ({exc.strerror})") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise BundleFileSetError(f"{where}: {path.name} is not a plain regular file")
    return os.fdopen(fd, "rb", buffering=_FILE_BUFFER)


ProgressFn = Callable[[int], None]
"""Called with the number of bytes just hashed (drives a progress bar)."""


def hash_open_file(
    fh: BinaryIO, keep_bytes: int = 0, progress: ProgressFn | None = None
) -> tuple[str, bytes | None]:
    """Stream sha256 of `fh` from the start; also return its bytes if size <= keep_bytes."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    kept = bytearray() if keep_bytes else None
    fh.seek(0)
    while True:
        n = fh.readinto(view)  # type: ignore[attr-defined]
        if not n:
            break
        h.update(view[:n])
        if progress is not None:
            progress(n)
        if kept is not None:
            if len(kept) + n > keep_bytes:
                kept = None
            else:
                kept += view[:n]
    return h.hexdigest(), (bytes(kept) if kept is not None else None)
