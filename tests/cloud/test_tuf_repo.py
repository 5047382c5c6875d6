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
