"""fleet.tuf_client against a real TUF repository (cloud.tuf_repo) served through a
repository simulator that implements the FetchFile stream contract (offsets, chunks,
NOT_FOUND) — the real gRPC server is exercised in test_agent_e2e.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cloud.tuf_repo import TufRepository
from fleet.tuf_client import (
    DiskFullError,
    GrpcFetcher,
    TransportFetcher,
    TufClient,
    TufClientError,
)
from protos import device_pb2


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class RepoServer:
    """Serves a TufRepository's files like DeviceService.FetchFile does."""

    def __init__(self, repo: TufRepository, chunk: int = 1000) -> None:
        self.repo = repo
        self.chunk = chunk
        self.bytes_sent = 0
        self.requests: list[tuple[int, str, int]] = []
        self.extra_tail = b""

    def __call__(
        self, request: device_pb2.FetchFileRequest, timeout: float
    ) -> Iterator[device_pb2.FileChunk]:
        self.requests.append((request.kind, request.path, request.offset))
        base = (
            self.repo.metadata_dir
            if request.kind == device_pb2.FILE_KIND_METADATA
            else self.repo.targets_dir
        )
        path = base / request.path
        if not path.is_file():
            raise _RpcError(grpc.StatusCode.NOT_FOUND, f"no such file {request.path}")
        data = path.read_bytes()
        if request.kind == device_pb2.FILE_KIND_TARGET:
            data += self.extra_tail
        offset = request.offset
        end = min(len(data), offset + request.length) if request.length else len(data)
        while offset < end:
            piece = data[offset : min(offset + self.chunk, end)]
            self.bytes_sent += len(piece)
            yield device_pb2.FileChunk(
                offset=offset,
                data=piece,
                total_size=len(data),
                last=offset + len(piece) >= end,
            )
            offset += len(piece)


@pytest.fixture
def repo(tmp_path: Path) -> TufRepository:
    r = TufRepository.create(tmp_path / "repo")
    efb = tmp_path / "pendulum-1.1.0.efb"
    efb.write_bytes(bytes(range(256)) * 40)  # 10,240 bytes
    r.add_target("bundles/pendulum-1.1.0.efb", efb, {"name": "pendulum", "sequence": 2})
    return r


def _client(tmp_path: Path, repo: TufRepository, server: RepoServer) -> TufClient:
    return TufClient(tmp_path / "agent", repo.metadata_dir / "1.root.json", GrpcFetcher(server))


def test_refresh_finds_the_signed_target_and_downloads_it_verified(
    tmp_path: Path, repo: TufRepository
) -> None:
    view = _client(tmp_path, repo, RepoServer(repo)).refresh()
    target = view.target("bundles/pendulum-1.1.0.efb")
    assert target is not None and target.custom["sequence"] == 2 and target.length == 10_240
    path = view.download(target)
    assert path.read_bytes() == bytes(range(256)) * 40
    assert view.target("bundles/unknown-9.9.9.efb") is None


def test_download_resumes_from_a_partial_file(tmp_path: Path, repo: TufRepository) -> None:
    server = RepoServer(repo)
    view = _client(tmp_path, repo, server).refresh()
    target = view.target("bundles/pendulum-1.1.0.efb")
    assert target is not None
    view.downloads.mkdir(parents=True, exist_ok=True)
    (view.downloads / f"{target.sha256}.part").write_bytes((bytes(range(256)) * 40)[:6000])
    server.bytes_sent = 0
    path = view.download(target)
    assert path.read_bytes() == bytes(range(256)) * 40
    assert server.bytes_sent == 10_240 - 6000  # only the missing tail crossed the wire
    assert server.requests[-1][2] == 6000


def test_target_bytes_that_do_not_match_the_signed_hash_are_refused(
    tmp_path: Path, repo: TufRepository
) -> None:
    view = _client(tmp_path, repo, RepoServer(repo)).refresh()
    target = view.target("bundles/pendulum-1.1.0.efb")
    assert target is not None
    stored = next(repo.targets_dir.rglob(f"{target.sha256}.*"))
    stored.write_bytes(b"\x00" * target.length)  # same length, other bytes
    with pytest.raises(TufClientError, match="do not match the signed"):
        view.download(target)
    assert not list(view.downloads.glob("*"))  # nothing half-trusted is left behind


def test_server_sending_more_than_the_signed_length_is_cut_off(
    tmp_path: Path, repo: TufRepository
) -> None:
    server = RepoServer(repo)
    view = _client(tmp_path, repo, server).refresh()
    target = view.target("bundles/pendulum-1.1.0.efb")
    assert target is not None
    server.extra_tail = b"x" * 5000
    with pytest.raises(TufClientError, match="more than the signed"):
        view.download(target)


def test_disk_full_is_reported_before_a_byte_is_written(
    tmp_path: Path, repo: TufRepository
) -> None:
    server = RepoServer(repo)
    view = _client(tmp_path, repo, server).refresh()
    target = view.target("bundles/pendulum-1.1.0.efb")
    assert target is not None
    sent = server.bytes_sent
    with pytest.raises(DiskFullError, match="needed to download and unpack"):
        view.download(target, disk_free=lambda _p: 15_000)
    assert server.bytes_sent == sent and not list(view.downloads.glob("*.part"))


def test_tampered_metadata_fails_the_refresh(tmp_path: Path, repo: TufRepository) -> None:
    ts = repo.metadata_dir / "timestamp.json"
    doc = json.loads(ts.read_text())
    doc["signed"]["version"] += 1  # signature no longer matches
    ts.write_text(json.dumps(doc))
    with pytest.raises(TufClientError, match="TUF refresh failed"):
        _client(tmp_path, repo, RepoServer(repo)).refresh()


def test_missing_bootstrap_root_names_the_file(tmp_path: Path, repo: TufRepository) -> None:
    client = TufClient(tmp_path / "agent", tmp_path / "nope.json", GrpcFetcher(RepoServer(repo)))
    with pytest.raises(TufClientError, match=r"nope\.json"):
        client.refresh()


def test_each_refresh_uses_a_fresh_updater_and_sees_new_targets(
    tmp_path: Path, repo: TufRepository
) -> None:
    client = _client(tmp_path, repo, RepoServer(repo))
    assert client.refresh().target("bundles/pendulum-1.2.0.efb") is None
    efb = tmp_path / "p2.efb"
    efb.write_bytes(b"new bundle")
    repo.add_target("bundles/pendulum-1.2.0.efb", efb, {"name": "pendulum", "sequence": 3})
    assert client.refresh().target("bundles/pendulum-1.2.0.efb") is not None


def test_a_transport_without_stream_cannot_be_made() -> None:
    class NoStream(TransportFetcher):
        pass

    with pytest.raises(TypeError, match="stream"):
        NoStream()  # type: ignore[abstract]
