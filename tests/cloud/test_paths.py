"""FetchFile's path mapping never leaves the repository, whatever the client sends."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.server._rpc import RpcError
from cloud.server.device_service import resolve_repo_path

PARTS = st.sampled_from(["..", ".", "", "a", "b.json", "/", "\\", "\x00", "%2e%2e", "~", "link"])


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    base = root / "metadata"
    (base / "a").mkdir(parents=True)
    (base / "b.json").write_text("{}")
    (root / "secret.key").write_text("k")
    os.symlink(root / "secret.key", base / "link")
    return base


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(PARTS, min_size=1, max_size=6), text=st.text(max_size=40))
def test_resolved_paths_stay_inside_the_repository(repo: Path, parts: list[str], text: str) -> None:
    for candidate in ("/".join(parts), text):
        try:
            resolved = resolve_repo_path(repo, candidate)
        except RpcError as exc:
            assert exc.code == grpc.StatusCode.INVALID_ARGUMENT
            continue
        real = os.path.realpath(repo)
        assert os.path.commonpath([real, str(resolved)]) == real, candidate


def test_symlink_to_outside_is_refused(repo: Path) -> None:
    with pytest.raises(RpcError, match="leaves the repository"):
        resolve_repo_path(repo, "link")
