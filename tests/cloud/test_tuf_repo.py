"""The TUF repository as python-tuf's own client sees it: targets, timestamp refresh,
key rotation of every role, refusal to mutate a published target."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tuf.api.exceptions import DownloadHTTPError
from tuf.api.metadata import Metadata
from tuf.ngclient import FetcherInterface, Updater

from cloud.tuf_repo import TufError, TufRepository


class FileFetcher(FetcherInterface):
    """Serves the repository directories the way FetchFile does (404 when missing)."""

    def __init__(self, repo: TufRepository) -> None:
        self.repo = repo

    def _fetch(self, url: str) -> Iterator[bytes]:
        kind, _, path = url.removeprefix("repo://").partition("/")
        base = self.repo.metadata_dir if kind == "metadata" else self.repo.targets_dir
        try:
            return iter([(base / path).read_bytes()])
        except FileNotFoundError as exc:
            raise DownloadHTTPError(path, 404) from exc


def _client(repo: TufRepository, where: Path, bootstrap: bytes) -> Updater:
    (where / "meta").mkdir(parents=True, exist_ok=True)
    (where / "targets").mkdir(exist_ok=True)
    return Updater(
        str(where / "meta"),
        "repo://metadata/",
        str(where / "targets"),
        "repo://targets/",
        fetcher=FileFetcher(repo),
        bootstrap=bootstrap,
    )


@pytest.fixture
def repo(tmp_path: Path) -> TufRepository:
    r = TufRepository.create(tmp_path / "tuf")
    blob = tmp_path / "b.efb"
    blob.write_bytes(b"bundle bytes")
    r.add_target("bundles/p-1.0.0.efb", blob, {"name": "p", "version": "1.0.0", "sequence": 1})
    return r


def test_client_downloads_a_target_with_its_custom_fields(
    repo: TufRepository, tmp_path: Path
) -> None:
    up = _client(repo, tmp_path / "c", repo.root_json())
    up.refresh()
    info = up.get_targetinfo("bundles/p-1.0.0.efb")
    assert info is not None and info.custom == {"name": "p", "version": "1.0.0", "sequence": 1}
    assert Path(up.download_target(info)).read_bytes() == b"bundle bytes"


@pytest.mark.parametrize("role", ["root", "targets", "snapshot", "timestamp"])
def test_rotating_a_key_keeps_old_clients_updating(
    repo: TufRepository, tmp_path: Path, role: str
) -> None:
    bootstrap = repo.root_json()
    first = _client(repo, tmp_path / "c", bootstrap)
    first.refresh()
    new_keyid = repo.rotate_key(role)
    root = Metadata.from_bytes(repo.root_json())
    assert root.signed.version == 2
    assert root.signed.roles[role].keyids == [new_keyid]
    # A client that trusted root v1 walks to v2 and accepts metadata signed by the new key.
    again = _client(repo, tmp_path / "c", bootstrap)
    again.refresh()
    assert again.get_targetinfo("bundles/p-1.0.0.efb") is not None
    # ... and so does a client flashed before the rotation, starting from scratch.
    fresh = _client(repo, tmp_path / "fresh", bootstrap)
    fresh.refresh()


def test_published_targets_are_immutable(repo: TufRepository, tmp_path: Path) -> None:
    other = tmp_path / "other.efb"
    other.write_bytes(b"different bytes")
    before = (repo.metadata_dir / "timestamp.json").read_bytes()
    with pytest.raises(TufError, match="immutable"):
        repo.add_target("bundles/p-1.0.0.efb", other, {})
    assert (repo.metadata_dir / "timestamp.json").read_bytes() == before


def test_unsafe_target_names_are_refused(repo: TufRepository, tmp_path: Path) -> None:
    blob = tmp_path / "x"
    blob.write_bytes(b"x")
    for bad in ("../x", "/abs", "a/../../x", "a//b", ""):
        with pytest.raises(TufError, match="safe relative path"):
            repo.add_target(bad, blob, {})


def test_refreshed_timestamp_is_accepted_by_clients(repo: TufRepository, tmp_path: Path) -> None:
    up = _client(repo, tmp_path / "c", repo.root_json())
    up.refresh()
    repo.refresh_timestamp(3600)
    again = _client(repo, tmp_path / "c", repo.root_json())
    again.refresh()
    ts = Metadata.from_bytes((tmp_path / "c" / "meta" / "timestamp.json").read_bytes())
    assert (
        ts.signed.version
        == Metadata.from_bytes((repo.metadata_dir / "timestamp.json").read_bytes()).signed.version
    )


_RACER = """
import sys, time
from pathlib import Path
from cloud.tuf_repo import TufRepository
repo = TufRepository(Path(sys.argv[1]))
go = Path(sys.argv[2])
print("ready", flush=True)
deadline = time.monotonic() + 60
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit("no go file")
    time.sleep(0.005)
older = None if sys.argv[3] == "always" else 50.0
expires, resigned = repo.refresh_timestamp(3700, only_if_older_than=older)
print(int(resigned), flush=True)
"""


def _race(repo: TufRepository, tmp_path: Path, mode: str, n: int = 4) -> tuple[int, list[int]]:
    """`n` processes, each with its own repository object on one home, re-signing the
    timestamp at the same moment; returns the version bump and what each reported."""
    import os
    import subprocess
    import sys

    def version() -> int:
        ts = Metadata.from_bytes((repo.metadata_dir / "timestamp.json").read_bytes())
        return int(ts.signed.version)

    repo.refresh_timestamp(3600)  # signed just now with 3600 s: 100 s "old" for 3700 s
    start = version()
    go = tmp_path / f"go-{mode}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(repo.root), str(go), mode],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(n)
    ]
    for p in procs:  # every racer has its repository open before any starts
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    go.touch()
    said = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0, out
        said.append(int(out.strip()))
    return version() - start, said


def test_replicas_deciding_together_resign_the_timestamp_once(
    repo: TufRepository, tmp_path: Path
) -> None:
    bump, said = _race(repo, tmp_path, "due")
    assert bump == 1
    assert sorted(said) == [0, 0, 0, 1]
    # Not due now (just re-signed with 3700 s): a further call leaves it alone.
    before = repo.timestamp_expires()
    assert repo.refresh_timestamp(3700, only_if_older_than=50.0) == (before, False)


def test_unconditional_refresh_bumps_per_caller(repo: TufRepository, tmp_path: Path) -> None:
    """The race above is real: without the decision under the lock each racer re-signs."""
    bump, said = _race(repo, tmp_path, "always")
    assert bump == 4 and said == [1, 1, 1, 1]


def test_timestamp_due_rule(repo: TufRepository) -> None:
    repo.refresh_timestamp(3600)
    # Signed just now for 3600 s: not due for a 60 s refresh period at 3600 s.
    assert repo.refresh_timestamp(3600, only_if_older_than=60.0)[1] is False
    # A lifetime longer than configured (the expiry setting lowered): re-signed.
    assert repo.refresh_timestamp(1800, only_if_older_than=60.0)[1] is True
    # Less than half the lifetime left (the expiry setting raised a lot): re-signed.
    assert repo.refresh_timestamp(1_000_000, only_if_older_than=10.0**9)[1] is True
