"""The `.efb` transport form: one uncompressed tar of the bundle directory.

Packing is deterministic (sorted names, zero mtimes/owners), so the same bundle
always gives the same bytes and the same TUF hash. Unpacking treats the archive
as hostile: only regular files and directories with plain relative names,
`tarfile`'s ``filter="data"`` (PEP 706) as a second line of defence, caps on the
member count and the total size (the caller passes the signed TUF length), into
a fresh staging directory that is verified *in place* afterwards, so nothing is
moved between the check and the use. On any error the staging directory is
removed again: bad input leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from pathlib import Path, PurePosixPath

from runtime.atomicio import atomic_writer, fsync_dir
from runtime.bundle._files import CHUNK, open_regular, walk_bundle
from runtime.bundle._oms import SIGNATURE_NAME
from runtime.bundle.create import POLICY_NAME
from runtime.bundle.errors import BundleArchiveError, BundleFileSetError
from runtime.manifest import MANIFEST_NAME

__all__ = ["DEFAULT_MAX_MEMBERS", "DEFAULT_MAX_TOTAL_BYTES", "pack_bundle", "unpack_bundle"]

DEFAULT_MAX_MEMBERS = 64
DEFAULT_MAX_TOTAL_BYTES = 2 << 30  # 2 GiB: above any policy a robot should run
_TAR_OVERHEAD = 1024  # headers and end-of-archive blocks, per member, generously


def pack_bundle(bundle_dir: str | os.PathLike[str], out_efb: str | os.PathLike[str]) -> Path:
    """Write `out_efb` (atomically) from a signed bundle directory; return its path."""
    bdir = Path(bundle_dir)
    out = Path(out_efb)
    try:
        files, dirs = walk_bundle(bdir)
    except BundleFileSetError as exc:
        raise BundleArchiveError(f"cannot pack: {exc}") from exc
    for required in (POLICY_NAME, MANIFEST_NAME):
        if required not in files:
            raise BundleArchiveError(f"cannot pack {bdir}: {required} is missing")
    if not (bdir / SIGNATURE_NAME).is_file():
        raise BundleArchiveError(f"cannot pack {bdir}: it is not signed (no {SIGNATURE_NAME})")
    if out.resolve().is_relative_to(bdir.resolve()):
        raise BundleArchiveError(
            f"cannot pack {bdir} into {out}: the archive would land inside the bundle"
        )
    names = sorted([*dirs, *files, SIGNATURE_NAME])
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        atomic_writer(out) as fh,
        tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name in names:
            path = bdir / name
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if name in dirs:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                continue
            with open_regular(path, str(bdir)) as src:
                info.size = os.fstat(src.fileno()).st_size
                info.mode = 0o644
                tar.addfile(info, src)
    return out


def _check_member(m: tarfile.TarInfo, efb: Path) -> str:
    where = f"{efb}: member {m.name!r}"
    name = m.name
    p = PurePosixPath(name)
    if name.startswith("/") or p.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise BundleArchiveError(f"{where} has an absolute path; refused")
    if ".." in p.parts or "\\" in name or "\x00" in name:
        raise BundleArchiveError(f"{where} escapes the bundle directory ('..'); refused")
    if m.issym() or m.islnk():
        kind = "a symlink" if m.issym() else "a hard link"
        raise BundleArchiveError(f"{where} is {kind} (to {m.linkname!r}); refused")
    if m.ischr() or m.isblk() or m.isfifo():
        raise BundleArchiveError(f"{where} is a device file or FIFO; refused")
    if not (m.isreg() or m.isdir()):
        raise BundleArchiveError(f"{where} has tar type {m.type!r}; only files and directories")
    clean = p.as_posix().removeprefix("./")
    if clean in ("", "."):
        raise BundleArchiveError(f"{where} has an empty name")
    return clean


def unpack_bundle(
    efb_path: str | os.PathLike[str],
    staging_dir: str | os.PathLike[str],
    *,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
) -> Path:
    """Extract `efb_path` into the new directory `staging_dir`; return it (unverified).

    The caller must then `verify_bundle(staging_dir, ...)` and use that directory
    as is. `staging_dir` must not exist yet (its parent must); it is created with
    mode 0700 and removed again if anything is wrong with the archive.
    """
    efb = Path(efb_path)
    staging = Path(staging_dir)
    try:
        st = os.stat(efb)
    except FileNotFoundError:
        raise BundleArchiveError(f"{efb}: no such archive") from None
    if not stat.S_ISREG(st.st_mode):
        raise BundleArchiveError(f"{efb}: not a regular file")
    if st.st_size > max_total_bytes + _TAR_OVERHEAD * (max_members + 2) + 10240:
        raise BundleArchiveError(
            f"{efb}: {st.st_size} bytes exceeds the cap of {max_total_bytes} bytes"
        )
    try:
        staging.mkdir(mode=0o700)
    except FileExistsError:
        raise BundleArchiveError(
            f"{staging}: already exists; unpack needs a fresh directory"
        ) from None
    try:
        _extract(efb, staging, max_members, max_total_bytes)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(staging)
    return staging


def _extract(efb: Path, staging: Path, max_members: int, max_total_bytes: int) -> None:
    seen: set[str] = set()
    total = 0
    try:
        tar = tarfile.open(efb, mode="r:", bufsize=CHUNK)  # noqa: SIM115 - "r:": uncompressed only
    except tarfile.TarError as exc:
        raise BundleArchiveError(f"{efb}: not an uncompressed tar archive ({exc})") from exc
    with tar:
        count = 0
        while True:
            try:
                member = tar.next()
            except tarfile.TarError as exc:
                raise BundleArchiveError(f"{efb}: corrupt tar archive ({exc})") from exc
            if member is None:
                break
            count += 1
            if count > max_members:
                raise BundleArchiveError(f"{efb}: more than {max_members} members; refused")
            name = _check_member(member, efb)
            if name in seen:
                raise BundleArchiveError(f"{efb}: member {name!r} appears twice; refused")
            seen.add(name)
            total += member.size
            if total > max_total_bytes:
                raise BundleArchiveError(
                    f"{efb}: member {name!r} brings the total to {total} bytes, over the cap "
                    f"of {max_total_bytes}; refused"
                )
            member.name = name
            try:
                tar.extract(member, staging, filter="data", set_attrs=False)
            except (tarfile.TarError, OSError) as exc:
                raise BundleArchiveError(f"{efb}: cannot extract {name!r} ({exc})") from exc
            if member.isreg():
                os.chmod(staging / name, 0o644)
        if count == 0:
            raise BundleArchiveError(f"{efb}: empty archive")
