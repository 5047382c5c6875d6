"""The broker's own copies of its TLS files, readable by the user it runs as.

Started as root, Mosquitto drops privileges to its ``user`` (``mosquitto`` on Debian)
before it opens its certificates, so it cannot read them inside the plane's home
(0700). ``edgeflux cloud broker-config`` therefore copies the CA, the server
certificate and key and the CRL into ``<out>/tls/``: owned by root and the broker
user's group, the key 0640, when run as root; owned by the caller otherwise (then the
broker runs as the caller). The CRL copy is refreshed by every revocation
(:func:`refresh_crl_copy`, called from ``cloud.broker_reload``).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
from pathlib import Path

from runtime.atomicio import atomic_write_bytes

__all__ = ["BrokerFilesError", "copy_tls_files", "own_dir", "own_file", "refresh_crl_copy"]


class BrokerFilesError(RuntimeError):
    """A TLS file could not be copied for the broker; the message names it."""


def _ids(run_as: str | None) -> tuple[int, int] | None:
    """(uid 0, gid of `run_as`) when we are root and may hand files to that user."""
    if os.geteuid() != 0 or not run_as:
        return None
    try:
        gid = pwd.getpwnam(run_as).pw_gid
    except KeyError:
        try:
            gid = grp.getgrnam(run_as).gr_gid
        except KeyError as exc:
            raise BrokerFilesError(f"--run-as {run_as!r}: no such user on this machine") from exc
    return 0, gid


def _place(src: Path, dst: Path, private: bool, ids: tuple[int, int] | None) -> None:
    try:
        data = src.read_bytes()
    except OSError as exc:
        raise BrokerFilesError(f"cannot read {src}: {exc}") from exc
    mode = (0o640 if ids else 0o600) if private else 0o644
    atomic_write_bytes(dst, data, mode=mode)
    if ids is not None:
        os.chown(dst, *ids)
        os.chmod(dst, mode)


def copy_tls_files(out_dir: Path, files: dict[str, Path], run_as: str | None) -> dict[str, Path]:
    """Copy `files` (name → source; the name ``key`` is private) into ``out_dir/tls``."""
    ids = _ids(run_as)
    tls = out_dir / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    os.chmod(out_dir, 0o755)
    os.chmod(tls, 0o750 if ids else 0o700)
    if ids is not None:
        os.chown(tls, *ids)
    placed = {}
    for name, src in files.items():
        dst = tls / f"{name}.pem"
        _place(src, dst, name == "key", ids)
        placed[name] = dst
    return placed


def refresh_crl_copy(crl: Path, copy: Path) -> None:
    """Rewrite the broker's CRL copy from the plane's, keeping its owner and mode."""
    st = copy.stat() if copy.exists() else None
    data = crl.read_bytes()
    atomic_write_bytes(copy, data, mode=0o644)
    if st is not None and os.geteuid() == 0:
        os.chown(copy, st.st_uid, st.st_gid)


def own_dir(path: Path, run_as: str | None) -> None:
    """Give a directory the broker writes (persistence) to the broker's user."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0 and run_as:
        try:
            pw = pwd.getpwnam(run_as)
        except KeyError as exc:
            raise BrokerFilesError(f"--run-as {run_as!r}: no such user on this machine") from exc
        shutil.chown(path, pw.pw_uid, pw.pw_gid)


def own_file(path: Path, run_as: str | None) -> None:
    """Give a file the broker rewrites (its dynamic-security document) to its user."""
    if os.geteuid() == 0 and run_as:
        try:
            pw = pwd.getpwnam(run_as)
        except KeyError as exc:
            raise BrokerFilesError(f"--run-as {run_as!r}: no such user on this machine") from exc
        os.chown(path, pw.pw_uid, pw.pw_gid)
