"""Where a flash writes: a directory, an SSH prefix, or an image tarball.

Every target offers the same few primitives; `edgeflux.provision.flasher` does the
rest. Writes are idempotent per file (a file already holding the planned bytes is
left alone), so re-running an interrupted flash completes it.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

from edgeflux.provision._plan import FileEntry
from edgeflux.provision.errors import FlashError
from runtime.atomicio import atomic_writer

__all__ = ["DirTarget", "ImageTarget", "SshTarget", "Target", "parse_target"]

Progress = Callable[[int], None]
"""Called with the number of bytes just written."""


class Target(Protocol):
    description: str

    def read_file(self, path: str) -> bytes | None: ...
    def prepare(self, needed_bytes: int) -> None: ...
    def digests(self, paths: Sequence[str]) -> dict[str, str]: ...
    def write(self, entries: Sequence[FileEntry], progress: Progress) -> None: ...
    def fetch(self, paths: Sequence[str], dest: Path) -> None: ...
    def finish(self) -> None: ...


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class DirTarget:
    """A directory that is (or will be mounted as) the robot's root filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.description = f"dir:{self.root}"

    def _path(self, rel: str) -> Path:
        return self.root / rel

    def read_file(self, path: str) -> bytes | None:
        p = self._path(path)
        return p.read_bytes() if p.is_file() else None

    def prepare(self, needed_bytes: int) -> None:
        base = _existing_ancestor(self.root)
        if not os.access(base, os.W_OK | os.X_OK):
            raise FlashError(f"{self.description}: {base} is not writable by this user")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FlashError(f"{self.description}: cannot create {self.root}: {exc}") from exc
        free = shutil.disk_usage(self.root).free
        if free < needed_bytes:
            raise FlashError(
                f"{self.description}: needs {needed_bytes / 1e6:.1f} MB, only "
                f"{free / 1e6:.1f} MB free; nothing was written"
            )

    def digests(self, paths: Sequence[str]) -> dict[str, str]:
        out = {}
        for rel in paths:
            p = self._path(rel)
            if p.is_file() and not p.is_symlink():
                out[rel] = _sha256_file(p)
        return out

    def write(self, entries: Sequence[FileEntry], progress: Progress) -> None:
        for entry in entries:
            dest = self._path(entry.path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_symlink() or dest.is_dir():
                raise FlashError(f"{self.description}: {entry.path} exists and is not a file")
            with atomic_writer(dest, entry.mode) as fh:
                for chunk in entry.chunks():
                    fh.write(chunk)
                    progress(len(chunk))
            if entry.path.endswith("identity/device.key"):
                dest.parent.chmod(0o700)

    def fetch(self, paths: Sequence[str], dest: Path) -> None:
        for rel in paths:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self._path(rel), target)

    def finish(self) -> None:
        return None


class ImageTarget:
    """An uncompressed, reproducible tarball of the robot root (uid/gid 0, fixed mtime)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).absolute()
        self.description = f"image:{self.path}"
        self._staging = Path(tempfile.mkdtemp(prefix=".edgeflux-image-", dir=self._parent()))
        self._dir = DirTarget(self._staging)
        if self.path.is_file():
            self._unpack_existing()

    def _parent(self) -> Path:
        parent = self.path.parent
        if not parent.is_dir():
            raise FlashError(f"{self.description}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise FlashError(f"{self.description}: {parent} is not writable by this user")
        return parent

    def _unpack_existing(self) -> None:
        try:
            with tarfile.open(self.path, "r:") as tar:
                tar.extractall(self._staging, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise FlashError(f"{self.description}: existing image unreadable: {exc}") from exc

    def read_file(self, path: str) -> bytes | None:
        return self._dir.read_file(path)

    def prepare(self, needed_bytes: int) -> None:
        # staging copy + the tarball (512-byte headers and padding are small)
        self._dir.prepare(2 * needed_bytes + (1 << 20))

    def digests(self, paths: Sequence[str]) -> dict[str, str]:
        return self._dir.digests(paths)

    def write(self, entries: Sequence[FileEntry], progress: Progress) -> None:
        self._dir.write(entries, progress)

    def fetch(self, paths: Sequence[str], dest: Path) -> None:
        self._dir.fetch(paths, dest)

    def finish(self) -> None:
        files = sorted(p for p in self._staging.rglob("*") if p.is_file() and ".tmp-" not in p.name)
        with (
            atomic_writer(self.path, 0o644) as fh,
            tarfile.open(fileobj=fh, mode="w:", format=tarfile.PAX_FORMAT) as tar,
        ):
            dirs: set[str] = set()
            for f in files:
                rel = f.relative_to(self._staging)
                for parent in reversed(rel.parents[:-1] if len(rel.parents) > 1 else []):
                    name = parent.as_posix()
                    if name not in dirs:
                        dirs.add(name)
                        info = tarfile.TarInfo(name)
                        info.type = tarfile.DIRTYPE
                        info.mode = (self._staging / parent).stat().st_mode & 0o777
                        info.mtime = 0
                        tar.addfile(info)
                info = tarfile.TarInfo(rel.as_posix())
                info.size = f.stat().st_size
                info.mode = f.stat().st_mode & 0o777
                info.mtime = 0
                with f.open("rb") as src:
                    tar.addfile(info, src)
        shutil.rmtree(self._staging, ignore_errors=True)

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "_staging", ""), ignore_errors=True)


_SSH = re.compile(r"^ssh://(?P<user>[^@/]+)@(?P<host>[^:/]+)(?::(?P<port>\d+))?(?P<prefix>/.*)?$")


class SshTarget:
    """A robot reached over OpenSSH; files travel as a tar stream, digests come back."""

    def __init__(
        self,
        user: str,
        host: str,
        port: int = 22,
        prefix: str = "/",
        *,
        identity_file: Path | None = None,
        known_hosts: Path | None = None,
        ssh_options: Iterable[str] = (),
    ) -> None:
        self.prefix = prefix or "/"
        self.description = f"ssh://{user}@{host}:{port}{self.prefix}"
        opts = ["-p", str(port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        if identity_file is not None:
            opts += ["-i", str(identity_file), "-o", "IdentitiesOnly=yes"]
        if known_hosts is not None:
            opts += [
                "-o",
                f"UserKnownHostsFile={known_hosts}",
                "-o",
                "StrictHostKeyChecking=accept-new",
            ]
        for o in ssh_options:
            opts += ["-o", o]
        self._base = ["ssh", *opts, f"{user}@{host}"]

    def _run(
        self, script: str, *, stdin: bytes | None = None, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[bytes]:
        try:
            proc = subprocess.run(
                [*self._base, script], input=stdin, capture_output=True, timeout=timeout
            )
        except FileNotFoundError as exc:
            raise FlashError("the OpenSSH client `ssh` is not installed") from exc
        except subprocess.TimeoutExpired as exc:
            raise FlashError(f"{self.description}: ssh timed out after {timeout:.0f}s") from exc
        if proc.returncode == 255:
            raise FlashError(
                f"{self.description}: ssh failed: {proc.stderr.decode(errors='replace').strip()}"
            )
        if check and proc.returncode != 0:
            raise FlashError(
                f"{self.description}: remote command failed ({proc.returncode}): "
                f"{proc.stderr.decode(errors='replace').strip()}"
            )
        return proc

    def _q(self, rel: str = "") -> str:
        return shlex.quote(str(Path(self.prefix) / rel) if rel else self.prefix)

    def read_file(self, path: str) -> bytes | None:
        proc = self._run(f"cat {self._q(path)} 2>/dev/null", check=False)
        return proc.stdout if proc.returncode == 0 else None

    def prepare(self, needed_bytes: int) -> None:
        p = self._q()
        proc = self._run(
            f"mkdir -p {p} 2>/dev/null; test -d {p} -a -w {p} || exit 3; df -Pk {p} | tail -1",
            check=False,
        )
        if proc.returncode == 3:
            raise FlashError(f"{self.description}: {self.prefix} is not writable")
        if proc.returncode != 0:
            raise FlashError(f"{self.description}: cannot inspect {self.prefix}")
        fields = proc.stdout.decode().split()
        free = int(fields[3]) * 1024 if len(fields) >= 4 and fields[3].isdigit() else None
        if free is not None and free < needed_bytes:
            raise FlashError(
                f"{self.description}: needs {needed_bytes / 1e6:.1f} MB, only "
                f"{free / 1e6:.1f} MB free; nothing was written"
            )

    def digests(self, paths: Sequence[str]) -> dict[str, str]:
        if not paths:
            return {}
        quoted = " ".join(shlex.quote(p) for p in paths)
        proc = self._run(f"cd {self._q()} && sha256sum -- {quoted} 2>/dev/null", check=False)
        out = {}
        for line in proc.stdout.decode(errors="replace").splitlines():
            digest, _, name = line.partition("  ")
            if len(digest) == 64:
                out[name] = digest
        return out

    def write(self, entries: Sequence[FileEntry], progress: Progress) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:", format=tarfile.PAX_FORMAT) as tar:
            for entry in entries:
                info = tarfile.TarInfo(entry.path)
                info.size = entry.size
                info.mode = entry.mode
                data = b"".join(entry.chunks())
                tar.addfile(info, io.BytesIO(data))
                progress(len(data))
        p = self._q()
        self._run(f"mkdir -p {p} && cd {p} && tar -x --no-same-owner -p -f -", stdin=buf.getvalue())
        if any(e.path.endswith("identity/device.key") for e in entries):
            self._run(f"chmod 700 {self._q('etc/edgeflux/identity')}")

    def fetch(self, paths: Sequence[str], dest: Path) -> None:
        quoted = " ".join(shlex.quote(p) for p in paths)
        proc = self._run(f"cd {self._q()} && tar -c -f - -- {quoted}")
        with tarfile.open(fileobj=io.BytesIO(proc.stdout), mode="r:") as tar:
            tar.extractall(dest, filter="data")

    def finish(self) -> None:
        return None


def parse_target(
    spec: str, *, ssh_identity: Path | None = None, known_hosts: Path | None = None
) -> Target:
    """`dir:PATH`, `ssh://user@host[:port]/PREFIX` or `image:FILE.tar`."""
    if spec.startswith("dir:") and len(spec) > 4:
        return DirTarget(Path(spec[4:]))
    if spec.startswith("image:") and spec.endswith(".tar"):
        return ImageTarget(Path(spec[6:]))
    m = _SSH.match(spec)
    if m:
        return SshTarget(
            m.group("user"),
            m.group("host"),
            int(m.group("port") or 22),
            m.group("prefix") or "/",
            identity_file=ssh_identity,
            known_hosts=known_hosts,
        )
    raise FlashError(
        f"--target {spec!r}: expected dir:PATH, ssh://user@host[:port]/PREFIX or image:FILE.tar"
    )
