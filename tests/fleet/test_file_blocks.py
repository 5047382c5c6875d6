"""Files in blocks over MQTT: the codec at the boundary (hypothesis), and the plane's
answers to hostile requests (a real plane, its real TUF repository and store)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.server.file_responder import answer
from cloud.testing import RunningPlane, running_plane
from protos.file_blocks import (
    KINDS,
    MAX_BLOCK_BYTES,
    FileBlock,
    FileBlockError,
    FileRequest,
    parse_request_topic,
    request_topic,
    response_topic,
)


@given(st.binary(max_size=4096))
@settings(max_examples=400, deadline=None)
def test_the_request_decoder_refuses_garbage_with_its_own_error(raw: bytes) -> None:
    try:
        req = FileRequest.decode(raw)
    except FileBlockError:
        return
    assert req.kind in KINDS  # what got through is valid


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(
    st.dictionaries(st.sampled_from(["id", "kind", "path", "offset", "length", "x"]), _json_values)
)
@settings(max_examples=400, deadline=None)
def test_the_request_decoder_checks_every_field_of_json_objects(doc: dict[str, object]) -> None:
    raw = json.dumps(doc).encode()
    try:
        req = FileRequest.decode(raw)
    except FileBlockError as exc:
        assert str(exc)
        return
    assert 1 <= req.length <= MAX_BLOCK_BYTES and req.offset >= 0
    assert FileRequest.decode(req.encode()) == req


_HEX = "0123456789abcdef"


@given(
    st.one_of(
        st.text(max_size=80),
        st.text(_HEX, min_size=64, max_size=64),
        st.text(_HEX + "ABCDEF", min_size=63, max_size=65),
    )
)
@settings(max_examples=300, deadline=None)
def test_an_attestation_request_names_a_sha256_and_nothing_else(path: str) -> None:
    doc = {"id": "0123456789abcdef", "kind": "attestation", "path": path, "offset": 0}
    raw = json.dumps(doc | {"length": 4096}).encode()
    is_digest = len(path) == 64 and all(c in _HEX for c in path)
    try:
        req = FileRequest.decode(raw)
    except FileBlockError as exc:
        assert not is_digest
        assert "sha256 of policy.onnx" in str(exc) or "path" in str(exc), exc
        return
    assert is_digest and req.path == path
    assert FileRequest.decode(req.encode()) == req


@given(
    st.sampled_from(["metadata", "target"]),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=60),
    st.integers(0, 1 << 40),
    st.integers(1, MAX_BLOCK_BYTES),
)
def test_requests_round_trip(kind: str, path: str, offset: int, length: int) -> None:
    req = FileRequest("0123456789abcdef", kind, path, offset, length)
    assert FileRequest.decode(req.encode()) == req


@given(st.binary(max_size=3000))
@settings(max_examples=300, deadline=None)
def test_the_response_decoder_refuses_garbage_with_its_own_error(raw: bytes) -> None:
    try:
        block = FileBlock.decode(raw)
    except FileBlockError:
        return
    assert block.status in ("ok", "invalid", "not_found", "forbidden", "busy", "error")


@given(st.binary(max_size=5000), st.integers(0, 1000))
def test_responses_round_trip_and_a_block_past_the_file_is_refused(data: bytes, at: int) -> None:
    ok = FileBlock("0123456789abcdef", "ok", offset=at, total=at + len(data), data=data)
    assert FileBlock.decode(ok.encode()) == ok
    if data:
        short = FileBlock("0123456789abcdef", "ok", offset=at, total=at + len(data) - 1, data=data)
        with pytest.raises(FileBlockError, match="runs past"):
            FileBlock.decode(short.encode())


def test_topics_are_per_device_and_only_well_formed_ones_parse() -> None:
    assert request_topic("robot-1") == "edgeflux/v1/devices/robot-1/files/req"
    assert response_topic("robot-1") == "edgeflux/v1/devices/robot-1/files/resp"
    assert parse_request_topic("edgeflux/v1/devices/robot-1/files/req") == "robot-1"
    for bad in (
        "edgeflux/v1/devices/+/files/req",
        "edgeflux/v1/devices/robot-1/files/resp",
        "edgeflux/v1/devices/robot-1/events",
        "edgeflux/v1/devices/../files/req",
    ):
        assert parse_request_topic(bad) is None, bad
    with pytest.raises(FileBlockError):
        request_topic("robot/1")


# ---------------------------------------------------------------- the plane's answers


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlane]:
    with running_plane(tmp_path_factory.mktemp("plane") / "home") as p:
        p.device("robot-1")
        p.device("robot-gone")
        p.store.revoke_device("robot-gone")
        yield p


@pytest.fixture(scope="module")
def attested(plane: RunningPlane, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    """(policy.onnx sha256, envelope) of a bundle with a stored parity attestation."""
    from runtime.bundle import verify_bundle
    from runtime.trust import TrustStore
    from tests.attest.test_service import _attest, _bundle, _store

    bdir = _bundle(tmp_path_factory.mktemp("attested"), plane.home, "blocks")
    raw = _attest(plane.home, bdir)
    _store(plane, raw)
    return verify_bundle(bdir, TrustStore(plane.home.trust)).policy_sha256, raw


def _ask(plane: RunningPlane, device: str, payload: bytes | dict[str, object]) -> FileBlock:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    assert plane.control.plane is not None
    return plane.run(answer(plane.control.plane, device, raw, 4096))


def _req(**kw: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "id": "00000000000000aa",
        "kind": "metadata",
        "path": "1.root.json",
        "offset": 0,
        "length": 100,
    }
    doc.update(kw)
    return doc


def test_the_plane_serves_bounded_blocks_of_the_files_fetchfile_serves(
    plane: RunningPlane,
) -> None:
    root = (plane.home.tuf / "metadata" / "1.root.json").read_bytes()
    got = _ask(plane, "robot-1", _req(length=1 << 20))
    assert got.status == "ok" and got.id == "00000000000000aa"
    assert got.total == len(root) and got.data == root[:4096]  # capped at the block size
    tail = _ask(plane, "robot-1", _req(offset=len(root) - 10))
    assert tail.data == root[-10:]
    desired = _ask(plane, "robot-1", _req(kind="desired", path="", length=4096))
    assert desired.status == "ok" and json.loads(desired.data)["payloadType"]


@pytest.mark.parametrize(
    ("payload", "status", "says"),
    [
        (b"\xff\xfe not json", "invalid", "not UTF-8 JSON"),
        (b"[1, 2]", "invalid", "JSON object"),
        (b"{" * 5000, "invalid", "at most 2048"),
        (_req(path="../../keys/director.key"), "invalid", "'..'"),
        (_req(path="/etc/passwd"), "invalid", "relative"),
        (_req(path="a\\b"), "invalid", "invalid path"),
        (_req(kind="target", path="x/./y"), "invalid", "'.'"),
        (_req(kind="keys"), "invalid", "kind"),
        (_req(length=1 << 30), "invalid", "length"),
        (_req(length=0), "invalid", "length"),
        (_req(offset=-1), "invalid", "offset"),
        (_req(offset=10**9), "invalid", "past the end"),
        (_req(offset=True), "invalid", "offset"),
        (_req(id="NOT-HEX!"), "invalid", "request id"),
        (_req(extra=1), "invalid", "unknown fields"),
        (_req(path="no-such.json"), "not_found", "no such file"),
        (_req(kind="target", path="bundles"), "not_found", "not a file"),
        (_req(kind="desired", path="1.root.json"), "invalid", "no path"),
        (_req(kind="attestation", path=""), "invalid", "a path of 1-"),
        (_req(kind="attestation", path="xyz"), "invalid", "64 lowercase hex"),
        (_req(kind="attestation", path="AB" * 32), "invalid", "64 lowercase hex"),
        (_req(kind="attestation", path="../" + "0" * 61), "invalid", "64 lowercase hex"),
        (_req(kind="attestation", path="0" * 64), "not_found", "no parity attestation"),
    ],
)
def test_hostile_requests_are_refused_with_a_specific_reason(
    plane: RunningPlane, payload: bytes | dict[str, object], status: str, says: str
) -> None:
    (plane.home.tuf / "targets" / "bundles").mkdir(parents=True, exist_ok=True)
    got = _ask(plane, "robot-1", payload)
    assert (got.status, got.data) == (status, b""), got
    assert says in got.reason, got.reason


def test_a_symlink_out_of_the_repository_is_refused(plane: RunningPlane, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("the director key")
    link = plane.home.tuf / "metadata" / "leak.json"
    link.symlink_to(secret)
    try:
        got = _ask(plane, "robot-1", _req(path="leak.json"))
    finally:
        link.unlink()
    assert got.status == "invalid" and "leaves the repository" in got.reason


def test_unknown_and_revoked_devices_are_refused(
    plane: RunningPlane, attested: tuple[str, bytes]
) -> None:
    for device, says in (("robot-unknown", "not registered"), ("robot-gone", "revoked")):
        for req in (_req(), _req(kind="attestation", path=attested[0])):
            got = _ask(plane, device, req)
            assert got.status == "forbidden" and says in got.reason, got
            assert got.data == b""


def test_the_plane_serves_the_attestation_getattestation_serves(
    plane: RunningPlane, attested: tuple[str, bytes]
) -> None:
    from protos import attestation_pb2, attestation_pb2_grpc

    digest, raw = attested
    with plane.channel(plane.device("robot-att-grpc")) as ch:
        reply = attestation_pb2_grpc.AttestationServiceStub(ch).GetAttestation(  # type: ignore[no-untyped-call]
            attestation_pb2.GetAttestationRequest(subject_sha256=digest)
        )
    assert reply.envelope.dsse_json == raw
    got = _ask(plane, "robot-1", _req(kind="attestation", path=digest, length=1 << 20))
    assert (got.status, got.offset, got.total) == ("ok", 0, len(raw))
    assert got.data == raw[:4096]  # capped at the block size like every other file
    whole = b"".join(
        _ask(plane, "robot-1", _req(kind="attestation", path=digest, offset=at, length=4096)).data
        for at in range(0, len(raw), 4096)
    )
    assert whole == reply.envelope.dsse_json
    past = _ask(plane, "robot-1", _req(kind="attestation", path=digest, offset=len(raw) + 1))
    assert past.status == "invalid" and "past the attestation" in past.reason


def test_a_responder_that_cannot_start_stops_the_plane_only_when_asked_for(
    tmp_path: Path,
) -> None:
    from cloud.server.app import PlaneStartError
    from tests.servers import free_port

    closed = {"broker_url": f"mqtt://127.0.0.1:{free_port()}"}
    # As `cloud up` starts it (whenever there is a broker): a fallback path, so the
    # plane serves gRPC without it and says why in its log.
    with running_plane(tmp_path / "a", overrides=closed, files_over_mqtt=None) as p:
        assert p.control.files is None and p.control.server is not None
    with (
        pytest.raises(PlaneStartError, match="MQTT file responder"),
        running_plane(tmp_path / "b", overrides=closed, files_over_mqtt=True),
    ):
        pass
