"""The plane serves at most `max_concurrent_downloads` target streams at once."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.cli import cloud
from cloud.testing import ClientCredentials, RunningPlane, running_plane
from protos import device_pb2, device_pb2_grpc
from runtime.bundle import create_bundle, sign_bundle
from tests.bundle.conftest import make_manifest, make_policy
from tests.servers import wait_until


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[RunningPlane]:
    home = tmp_path / "plane"
    assert CliRunner().invoke(cloud, ["init", str(home)]).exit_code == 0
    with running_plane(home, overrides={"max_concurrent_downloads": 1}) as p:
        yield p


def test_a_second_download_waits_for_a_slot_while_metadata_is_served(
    plane: RunningPlane, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        cloud, ["device", "add", "r1", "--home", str(plane.home.root), "--json"]
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    creds = ClientCredentials("r1", Path(info["cert"]), Path(info["key"]), Path(info["ca"]))
    stub = device_pb2_grpc.DeviceServiceStub(plane.channel(creds))
    # Larger than what HTTP/2 flow control lets the server push ahead of the reader.
    policy = make_policy(tmp_path / "p.onnx", initializer_size=48_000_000)
    bundle = create_bundle(policy, make_manifest(), tmp_path / "b")
    sign_bundle(bundle, plane.home.key_path("model-signing", private=True))
    published = CliRunner().invoke(
        cloud, ["publish", str(bundle), "--home", str(plane.home.root), "--json"]
    )
    assert published.exit_code == 0, published.output
    pub = json.loads(published.stdout)
    remote = f"bundles/{pub['sha256']}.pendulum-1.0.0.efb"

    def target_stream() -> Iterator[device_pb2.FileChunk]:
        req = device_pb2.FetchFileRequest(
            kind=device_pb2.FILE_KIND_TARGET, path=remote, max_chunk_bytes=64 << 10
        )
        return stub.FetchFile(req, timeout=60)

    first = target_stream()
    head = next(first)  # holds the only slot until it is read to the end
    second_started = threading.Event()
    second: list[bytes] = []

    def run_second() -> None:
        it = target_stream()
        second.append(next(it).data)
        second_started.set()
        second.extend(c.data for c in it)

    t = threading.Thread(target=run_second, daemon=True)
    t.start()
    meta = stub.FetchFile(
        device_pb2.FetchFileRequest(kind=device_pb2.FILE_KIND_METADATA, path="1.root.json"),
        timeout=10,
    )
    assert b"".join(c.data for c in meta)  # metadata is not queued behind downloads
    assert not second_started.wait(0.5), "the second download got a slot while one was busy"
    whole = head.data + b"".join(c.data for c in first)
    wait_until(second_started.is_set, 20, "the second download to start after the first")
    t.join(20)
    assert b"".join(second) == whole and len(whole) == pub["size_bytes"]
