"""Chunked target downloads: only missing chunks cross the wire, resumable after kill -9."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cloud.tuf_repo import TufRepository
from fleet.chunk_store import ChunkStore
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
    # What crossed the wire: the fetched chunks plus at most one stream piece each.
    assert server.bytes_sent <= stats.fetched_bytes + stats.fetched_chunks * server.chunk


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
    store = ChunkStore(view.downloads / "chunks")
    refs_ok = [p.name for p in store.root.iterdir() if len(p.name) == 64]
    listed = {sha for sha, _ in target.custom["chunks"]}
    assert set(refs_ok) <= listed
    assert not (view.downloads / f"{target.sha256}.efb").exists()


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
    chunks_dir = agent / "downloads" / "chunks"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(repo.root), str(agent), target_name], env=env
    )
    total = len({sha for sha, _ in chunk_file(tmp_path / "pendulum-1.0.0.efb", PARAMS)})
    stop_at = random.Random(seed).randint(3, total - 5)

    def stored() -> int:
        return (
            len([p for p in chunks_dir.glob("*") if len(p.name) == 64])
            if chunks_dir.exists()
            else 0
        )

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
