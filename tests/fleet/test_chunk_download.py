"""Chunked target downloads: only missing chunks cross the wire, resumable after kill -9."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cloud.tuf_repo import TufRepository
from fleet.tuf_client import GrpcFetcher, TufClient, TufClientError
from runtime.bundle.chunking import ChunkParams, chunk_file
from tests.fleet.test_tuf_client import RepoServer
from tests.servers import wait_until

PARAMS = ChunkParams(min_size=1024, avg_size=4096, max_size=16384)
REPO_ROOT = Path(__file__).resolve().parents[2]


def _publish(repo: TufRepository, tmp: Path, version: str, data: bytes) -> str:
    efb = tmp / f"pendulum-{version}.efb"
    efb.write_bytes(data)
    target = f"bundles/pendulum-{version}.efb"
    custom = {"name": "pendulum", "version": version, "chunks": chunk_file(efb, PARAMS)}
    repo.add_target(target, efb, custom)
    return target


@pytest.fixture
def versions(tmp_path: Path) -> tuple[TufRepository, bytes, bytes]:
    rng = random.Random(7)
    v1 = rng.randbytes(200_000)
    v2 = v1[:170_000] + rng.randbytes(30_000)  # "the last layers retrained"
    repo = TufRepository.create(tmp_path / "repo")
    _publish(repo, tmp_path, "1.0.0", v1)
    _publish(repo, tmp_path, "1.1.0", v2)
    return repo, v1, v2


def _client(tmp_path: Path, repo: TufRepository, server: RepoServer) -> TufClient:
    return TufClient(tmp_path / "agent", repo.metadata_dir / "1.root.json", GrpcFetcher(server))


def test_an_update_fetches_only_the_chunks_the_robot_lacks(
    tmp_path: Path, versions: tuple[TufRepository, bytes, bytes]
) -> None:
    repo, v1, v2 = versions
    server = RepoServer(repo)
    view = _client(tmp_path, repo, server).refresh()
    first = view.target("bundles/pendulum-1.0.0.efb")
    assert first is not None
    assert view.download(first).read_bytes() == v1
    assert view.last_chunk_stats is not None
    assert view.last_chunk_stats.fetched_bytes == len(v1)
    server.bytes_sent = 0
    second = view.target("bundles/pendulum-1.1.0.efb")
    assert second is not None
    assert view.download(second).read_bytes() == v2
    stats = view.last_chunk_stats
    assert stats.reused_bytes > 150_000 and stats.fetched_bytes < 30_000 + 2 * PARAMS.max_size
    # Range requests: exactly the fetched chunks crossed the wire.
    assert server.bytes_sent == stats.fetched_bytes


def test_a_chunk_with_wrong_bytes_from_the_transport_is_refused_and_not_stored(
    tmp_path: Path, versions: tuple[TufRepository, bytes, bytes]
) -> None:
    repo, v1, _ = versions
    view = _client(tmp_path, repo, RepoServer(repo)).refresh()
    target = view.target("bundles/pendulum-1.0.0.efb")
    assert target is not None
    stored = next(repo.targets_dir.rglob(f"{target.sha256}.*"))
    bad = bytearray(v1)
    bad[100_000] ^= 0xFF
    stored.write_bytes(bytes(bad))
    with pytest.raises(TufClientError, match=r"do not match its signed sha256 .* not stored"):
        view.download(target)
    journal = _journal(view.downloads, target.sha256)
    bad_index = next(i for i, r in enumerate(_refs(target)) if r[0] + r[1] > 100_000)
    assert journal and all(int(line.split()[0]) < bad_index for line in journal)
    assert not (view.downloads / f"{target.sha256}.efb").exists()
    stored.write_bytes(v1)  # the plane is repaired: the download resumes after the good chunks
    assert view.download(target).read_bytes() == v1
    assert view.last_chunk_stats is not None
    assert view.last_chunk_stats.reused_bytes == sum(_refs(target)[i][1] for i in range(bad_index))


def _refs(target) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    out, offset = [], 0
    for _, n in target.custom["chunks"]:
        out.append((offset, n))
        offset += n
    return out


def _journal(downloads: Path, sha256: str) -> list[str]:
    path = downloads / f"{sha256}.chunked.done"
    return path.read_text().splitlines() if path.exists() else []


def test_a_chunk_list_that_contradicts_the_signed_length_is_refused(
    tmp_path: Path, versions: tuple[TufRepository, bytes, bytes]
) -> None:
    repo, v1, _ = versions
    efb = tmp_path / "odd.efb"
    efb.write_bytes(v1)
    chunks = chunk_file(efb, PARAMS)[:-1]
    repo.add_target("bundles/odd-1.0.0.efb", efb, {"name": "odd", "chunks": chunks})
    view = _client(tmp_path, repo, RepoServer(repo)).refresh()
    target = view.target("bundles/odd-1.0.0.efb")
    assert target is not None
    with pytest.raises(TufClientError, match=r"the chunks add up to \d+ bytes, the signed"):
        view.download(target)


_CHILD = """
import sys, time
from pathlib import Path
from cloud.tuf_repo import TufRepository
from fleet.tuf_client import GrpcFetcher, TufClient
from tests.fleet.test_tuf_client import RepoServer

class Slow(RepoServer):
    def __call__(self, request, timeout):
        for piece in super().__call__(request, timeout):
            time.sleep(0.004)
            yield piece

repo = TufRepository(Path(sys.argv[1]))
client = TufClient(Path(sys.argv[2]), repo.metadata_dir / "1.root.json", GrpcFetcher(Slow(repo)))
view = client.refresh()
view.download(view.target(sys.argv[3]))
"""


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_mid_download_resumes_without_refetching_stored_chunks(
    tmp_path: Path, versions: tuple[TufRepository, bytes, bytes], seed: int
) -> None:
    repo, v1, _ = versions
    target_name = "bundles/pendulum-1.0.0.efb"
    agent = tmp_path / "agent"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(repo.root), str(agent), target_name], env=env
    )
    total = len(chunk_file(tmp_path / "pendulum-1.0.0.efb", PARAMS))
    stop_at = random.Random(seed).randint(3, total - 5)

    downloads = agent / "downloads"
    sha = hashlib.sha256(v1).hexdigest()

    def stored() -> int:
        return len([x for x in _journal(downloads, sha) if len(x.rpartition(" ")[2]) == 64])

    try:
        wait_until(lambda: stored() >= stop_at, 60, f"{stop_at} chunks stored by the child")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    before = stored()
    assert 0 < before < total
    view = _client(tmp_path, repo, RepoServer(repo)).refresh()
    target = view.target(target_name)
    assert target is not None
    assert view.download(target).read_bytes() == v1
    stats = view.last_chunk_stats
    assert stats is not None
    assert stats.fetched_chunks == total - before  # nothing stored before the kill is refetched
