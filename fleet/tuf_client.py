"""TUF on the robot: ``tuf.ngclient.Updater`` over the gRPC ``FetchFile`` stream.

- The bootstrap root is the one written at flash (``<trust>/tuf-root.json``); the
  Updater keeps its own trusted copy in ``<agent state>/tuf/``.
- python-tuf allows one ``refresh()`` per Updater, so every update cycle builds a
  fresh one (:meth:`TufClient.refresh`).
- The fetcher is the plug point (:class:`TransportFetcher`: offset-addressed
  ranges of a metadata file or a target): :class:`GrpcFetcher` maps the Updater's
  URLs onto ``FetchFile(kind, path, offset)``, ``fleet.mqtt_fetch.MqttFetcher`` onto
  blocks over MQTT; a missing file becomes HTTP 404 so the root-rotation walk stops
  where it should. The transport is never trusted: lengths and hashes come from
  signed metadata, whichever transport brought the bytes.
- Targets are downloaded by :meth:`TufView.download` — resumable from a ``.part``
  file (FetchFile is offset-addressed), after checking free disk space for the
  target plus its extraction, and verified against the signed length and sha256
  before it is renamed into place. A target whose signed custom fields list its
  content-defined chunks is fetched chunk by chunk instead, skipping the chunks the
  robot's chunk store already holds (:mod:`fleet.chunk_store`).
"""

from __future__ import annotations

import abc
import errno
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
from tuf.api import exceptions as tuf_exc
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from fleet.bandwidth import Pacer
from fleet.chunk_store import ChunkError, ChunkStore, FetchStats, parse_chunk_list
from protos import device_pb2

__all__ = [
    "METADATA_URL",
    "TARGETS_URL",
    "DiskFullError",
    "FetchFn",
    "GrpcFetcher",
    "TransportFetcher",
    "TufClient",
    "TufClientError",
    "TufView",
]

METADATA_URL = "edgeflux-grpc://metadata/"
TARGETS_URL = "edgeflux-grpc://targets/"


class TufClientError(RuntimeError):
    """TUF refresh, lookup or download failed; the message says which file and why."""


class DiskFullError(TufClientError):
    """Not enough free space for the download (checked before a byte is written)."""


class FetchFn(Protocol):
    def __call__(
        self, request: device_pb2.FetchFileRequest, timeout: float
    ) -> Iterator[device_pb2.FileChunk]: ...


class TransportFetcher(FetcherInterface):
    """Ranges of TUF metadata files and targets over some transport."""

    @staticmethod
    def _split(url: str) -> tuple[int, str]:
        if url.startswith(METADATA_URL):
            return device_pb2.FILE_KIND_METADATA, url[len(METADATA_URL) :]
        if url.startswith(TARGETS_URL):
            return device_pb2.FILE_KIND_TARGET, url[len(TARGETS_URL) :]
        raise tuf_exc.DownloadError(f"{url} is not an EdgeFlux repository URL")

    @abc.abstractmethod
    def stream(self, kind: int, path: str, offset: int = 0, length: int = 0) -> Iterator[bytes]:
        """The bytes of `path` (a ``device_pb2.FILE_KIND_*``) from `offset`, `length` of
        them (0: to the end); raises ``tuf`` download errors (404 for a missing file)."""

    def _fetch(self, url: str) -> Iterator[bytes]:
        kind, path = self._split(url)
        return self.stream(kind, path)


class GrpcFetcher(TransportFetcher):
    """Streams TUF metadata and targets through ``DeviceService.FetchFile``."""

    def __init__(
        self,
        fetch: FetchFn,
        timeout_s: float = 60.0,
        chunk_bytes: int = 0,
        pacer: Pacer | None = None,
    ) -> None:
        self._fetch_rpc = fetch
        self.timeout_s = timeout_s
        self.chunk_bytes = chunk_bytes
        self.pacer = pacer
        """Paces target downloads (bandwidth cap, low priority); metadata is never paced."""

    def stream(self, kind: int, path: str, offset: int = 0, length: int = 0) -> Iterator[bytes]:
        """Chunks of `path` from `offset` (`length` bytes of it, 0: to the end); each
        chunk's offset is checked against ours."""
        req = device_pb2.FetchFileRequest(
            kind=kind,  # type: ignore[arg-type]
            path=path,
            offset=offset,
            max_chunk_bytes=self.chunk_bytes,
            length=length,
        )
        expected = offset
        try:
            for chunk in self._fetch_rpc(req, timeout=self.timeout_s):
                if chunk.offset != expected:
                    raise tuf_exc.DownloadError(
                        f"{path}: chunk at offset {chunk.offset}, expected {expected}"
                    )
                expected += len(chunk.data)
                if chunk.data:
                    if self.pacer is not None and kind == device_pb2.FILE_KIND_TARGET:
                        self.pacer.take(len(chunk.data))
                    yield chunk.data
                if chunk.last:
                    return
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.NOT_FOUND:
                raise tuf_exc.DownloadHTTPError(f"{path} not found", 404) from exc
            if code == grpc.StatusCode.PERMISSION_DENIED:
                raise tuf_exc.DownloadHTTPError(f"{path} forbidden", 403) from exc
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise tuf_exc.DownloadError(f"FetchFile {path}: {code}: {details}") from exc


@dataclass(frozen=True)
class TufTarget:
    path: str
    length: int
    sha256: str
    custom: dict[str, Any]


class TufView:
    """What one refresh made trustworthy: target lookups and verified downloads."""

    def __init__(self, updater: Updater, fetcher: TransportFetcher, downloads: Path) -> None:
        self._updater = updater
        self._fetcher = fetcher
        self.downloads = downloads
        self.last_chunk_stats: FetchStats | None = None
        """What the last chunked download fetched and reused (None: none yet)."""

    def target(self, path: str) -> TufTarget | None:
        try:
            info = self._updater.get_targetinfo(path)
        except tuf_exc.RepositoryError as exc:
            raise TufClientError(f"TUF metadata for target {path} is invalid: {exc}") from exc
        if info is None:
            return None
        sha = info.hashes.get("sha256")
        if not sha:
            raise TufClientError(f"TUF target {path} has no sha256 hash")
        custom = info.custom if isinstance(info.custom, dict) else {}
        return TufTarget(path, int(info.length), sha, dict(custom))

    def download(
        self,
        target: TufTarget,
        free_margin_bytes: int = 0,
        disk_free: Callable[[Path], int] | None = None,
    ) -> Path:
        """Download (resuming a partial file) and verify; returns the verified file."""
        self.downloads.mkdir(parents=True, exist_ok=True)
        final = self.downloads / f"{target.sha256}.efb"
        if final.exists() and _sha256(final) == target.sha256:
            return final
        # Consistent-snapshot naming: targets are fetched by hash-prefixed name.
        parent, _, name = target.path.rpartition("/")
        remote = f"{parent}/{target.sha256}.{name}" if parent else f"{target.sha256}.{name}"
        if "chunks" in target.custom:
            return self._download_chunks(target, remote, final, free_margin_bytes, disk_free)
        part = self.downloads / f"{target.sha256}.part"
        have = part.stat().st_size if part.exists() else 0
        if have > target.length:
            part.unlink()
            have = 0
        # The tarball plus its extraction into staging: twice the size, plus a margin.
        need = 2 * target.length - have + free_margin_bytes
        free = (disk_free or _disk_free)(self.downloads)
        if free < need:
            raise DiskFullError(
                f"{free} bytes free under {self.downloads}, {need} needed to download and "
                f"unpack {target.path} ({target.length} bytes)"
            )
        try:
            with part.open("ab") as fh:
                for data in self._fetcher.stream(device_pb2.FILE_KIND_TARGET, remote, have):
                    have += len(data)
                    if have > target.length:
                        raise TufClientError(
                            f"{target.path}: server sent more than the signed {target.length} bytes"
                        )
                    fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(f"disk full while writing {part}: {exc}") from exc
            raise TufClientError(f"writing {part}: {exc}") from exc
        except tuf_exc.DownloadError as exc:
            raise TufClientError(f"downloading {target.path}: {exc}") from exc
        if have != target.length or _sha256(part) != target.sha256:
            part.unlink(missing_ok=True)
            raise TufClientError(
                f"{target.path}: downloaded bytes do not match the signed length/sha256; "
                "the partial file was discarded"
            )
        os.replace(part, final)
        return final

    def _download_chunks(
        self,
        target: TufTarget,
        remote: str,
        final: Path,
        free_margin_bytes: int,
        disk_free: Callable[[Path], int] | None,
    ) -> Path:
        """Fetch only the signed chunks the chunk store lacks, then assemble and verify."""
        store = ChunkStore(self.downloads)
        try:
            refs = parse_chunk_list(target.custom["chunks"], target.length, target.path)
            missing = store.missing_bytes(refs, target.sha256)
            # The chunks still to fetch (written in place), the extraction, plus a margin.
            need = missing + target.length + free_margin_bytes
            free = (disk_free or _disk_free)(self.downloads)
            if free < need:
                raise DiskFullError(
                    f"{free} bytes free under {self.downloads}, {need} needed to fetch "
                    f"{missing} bytes of chunks of {target.path} and unpack it"
                )

            def fetch(offset: int, length: int) -> Iterator[bytes]:
                return self._fetcher.stream(device_pb2.FILE_KIND_TARGET, remote, offset, length)

            self.last_chunk_stats = store.download(refs, fetch, final, target.sha256, target.path)
            return final
        except ChunkError as exc:
            raise TufClientError(str(exc)) from exc
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(f"disk full while storing chunks of {target.path}") from exc
            raise TufClientError(f"storing chunks of {target.path}: {exc}") from exc
        except tuf_exc.DownloadError as exc:
            raise TufClientError(f"downloading {target.path}: {exc}") from exc


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _disk_free(path: Path) -> int:
    return int(shutil.disk_usage(path).free)


class TufClient:
    """Builds one fresh, refreshed Updater per update cycle."""

    def __init__(self, state_dir: Path, bootstrap_root: Path, fetcher: TransportFetcher) -> None:
        self.metadata_dir = state_dir / "tuf" / "metadata"
        self.downloads = state_dir / "downloads"
        self.bootstrap_root = bootstrap_root
        self.fetcher = fetcher

    def refresh(self) -> TufView:
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        try:
            bootstrap = self.bootstrap_root.read_bytes()
        except OSError as exc:
            raise TufClientError(
                f"cannot read the TUF bootstrap root {self.bootstrap_root}: {exc} "
                "(it is written at flash)"
            ) from exc
        try:
            updater = Updater(
                str(self.metadata_dir),
                METADATA_URL,
                None,
                TARGETS_URL,
                fetcher=self.fetcher,
                bootstrap=bootstrap,
            )
            updater.refresh()
        except (tuf_exc.RepositoryError, tuf_exc.DownloadError, ValueError) as exc:
            raise TufClientError(f"TUF refresh failed: {type(exc).__name__}: {exc}") from exc
        return TufView(updater, self.fetcher, self.downloads)
