"""The control plane end to end over real mTLS on a free port: DeviceService, admin API,
TUF distribution through FetchFile, and every refusal the issue lists."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey
from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface, Updater

from cloud.cli import cloud
from cloud.pki import FleetCA
from cloud.server.plane import DESIRED_STATE_PAYLOAD_TYPE
from cloud.store import Store
from cloud.testing import ClientCredentials, RunningPlane, running_plane
from protos import admin_pb2, admin_pb2_grpc, common_pb2, device_pb2, device_pb2_grpc
from runtime.bundle import pack_bundle
from tests.cloud.conftest import make_bundle
from tests.servers import wait_until

META, TARGET = device_pb2.FILE_KIND_METADATA, device_pb2.FILE_KIND_TARGET


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def plane(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPlane]:
    """One plane per database backend; the same tests run against both."""
    home = tmp_path_factory.mktemp("cloud") / "plane"
    assert CliRunner().invoke(cloud, ["init", str(home)]).exit_code == 0
    if request.param == "postgres":
        url = request.getfixturevalue("postgres").create_database("server_tests")
        config = home / "cloud.toml"
        config.write_text(config.read_text() + f'database_url = "{url}"\n')
    with running_plane(home, overrides={"max_message_bytes": 200_000}) as p:
        assert p.store.url.startswith(request.param)
        yield p


def _signing_key(plane: RunningPlane) -> Path:
    return plane.home.key_path("model-signing", private=True)


def _device_from_cli(plane: RunningPlane, device_id: str, *labels: str) -> ClientCredentials:
    args = ["device", "add", device_id, "--home", str(plane.home.root), "--json"]
    for lb in labels:
        args += ["--label", lb]
    result = CliRunner().invoke(cloud, args)
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    return ClientCredentials(device_id, Path(info["cert"]), Path(info["key"]), Path(info["ca"]))


def _device_stub(
    plane: RunningPlane, creds: ClientCredentials
) -> device_pb2_grpc.DeviceServiceStub:
    return device_pb2_grpc.DeviceServiceStub(plane.channel(creds))


def _admin_stub(
    plane: RunningPlane, creds: ClientCredentials
) -> admin_pb2_grpc.FleetAdminServiceStub:
    return admin_pb2_grpc.FleetAdminServiceStub(plane.channel(creds))


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    return err.value.code()


class GrpcFetcher(FetcherInterface):
    """What the agent's TUF fetcher does: URLs map onto FetchFile streams."""

    def __init__(self, stub: device_pb2_grpc.DeviceServiceStub) -> None:
        self.stub = stub
        self.fetched: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        kind_name, _, path = url.removeprefix("grpc://").partition("/")
        kind = META if kind_name == "metadata" else TARGET
        self.fetched.append(path)
        try:
            chunks = list(self.stub.FetchFile(device_pb2.FetchFileRequest(kind=kind, path=path)))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise DownloadHTTPError(exc.details() or "", 404) from exc
            raise
        return iter([c.data for c in chunks])


# --------------------------------------------------------------------------- the "done when"
def test_device_from_cli_gets_signed_desired_state_and_fetches_bundle_through_tuf(
    plane: RunningPlane, tmp_path: Path
) -> None:
    creds = _device_from_cli(plane, "robot-1", "site=lab")
    bundle = make_bundle(tmp_path / "b", _signing_key(plane), version="1.0.0", sequence=1)
    published = CliRunner().invoke(
        cloud, ["publish", str(bundle), "--home", str(plane.home.root), "--json"]
    )
    assert published.exit_code == 0, published.output
    info = json.loads(published.stdout)
    plane.store.set_desired(["robot-1"], {"name": "pendulum", "version": "1.0.0", "sequence": 1})

    stub = _device_stub(plane, creds)
    reply = stub.GetDesiredState(device_pb2.GetDesiredStateRequest())
    env = Envelope.from_dict(json.loads(reply.envelope.dsse_json))
    assert env.payload_type == DESIRED_STATE_PAYLOAD_TYPE
    pub = serialization.load_pem_public_key(plane.home.key_path("director").read_bytes())
    key = SSlibKey.from_crypto(pub, keyid=env.signatures and next(iter(env.signatures)))
    env.verify([key], 1)
    doc = json.loads(env.payload)
    assert doc["device_id"] == "robot-1"
    assert doc["bundle"] == {"name": "pendulum", "version": "1.0.0", "sequence": 1}
    assert doc["generation"] == 1
    assert dt.datetime.fromisoformat(doc["expires"]) > dt.datetime.now(dt.UTC)

    fetcher = GrpcFetcher(stub)
    (tmp_path / "tuf-targets").mkdir()
    updater = Updater(
        str(tmp_path / "tuf-meta"),
        "grpc://metadata/",
        str(tmp_path / "tuf-targets"),
        "grpc://targets/",
        fetcher=fetcher,
        bootstrap=plane.home.tuf.joinpath("metadata", "root.json").read_bytes(),
    )
    updater.refresh()
    target = updater.get_targetinfo(info["target"])
    assert target is not None
    assert target.custom["sequence"] == 1 and target.custom["name"] == "pendulum"
    assert target.custom["oms_root_digest"] == info["oms_root_digest"]
    path = updater.download_target(target)
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == info["sha256"]
    assert any(p.startswith(f"bundles/{info['sha256']}.") for p in fetcher.fetched)


def test_fetch_file_resumes_from_an_offset(plane: RunningPlane) -> None:
    stub = _device_stub(plane, plane.device("robot-resume"))
    full = plane.home.tuf.joinpath("metadata", "1.root.json").read_bytes()
    chunks = list(
        stub.FetchFile(
            device_pb2.FetchFileRequest(kind=META, path="1.root.json", max_chunk_bytes=100)
        )
    )
    assert b"".join(c.data for c in chunks) == full
    assert [c.last for c in chunks].count(True) == 1 and chunks[-1].last
    assert all(len(c.data) <= 100 for c in chunks)
    rest = list(
        stub.FetchFile(device_pb2.FetchFileRequest(kind=META, path="1.root.json", offset=700))
    )
    assert b"".join(c.data for c in rest) == full[700:]
    assert rest[0].offset == 700 and rest[0].total_size == len(full)
    at_end = list(
        stub.FetchFile(device_pb2.FetchFileRequest(kind=META, path="1.root.json", offset=len(full)))
    )
    assert [(c.data, c.last) for c in at_end] == [(b"", True)]
    ranged = list(
        stub.FetchFile(
            device_pb2.FetchFileRequest(
                kind=META, path="1.root.json", offset=300, length=250, max_chunk_bytes=100
            )
        )
    )  # a range request (one chunk of a chunked download): exactly those bytes, then last
    assert b"".join(c.data for c in ranged) == full[300:550] and ranged[-1].last
    assert [c.last for c in ranged].count(True) == 1


@pytest.mark.parametrize(
    ("kind", "path", "code"),
    [
        (META, "../pki/server.key", grpc.StatusCode.INVALID_ARGUMENT),
        (TARGET, "bundles/../../keys/root.key", grpc.StatusCode.INVALID_ARGUMENT),
        (META, "/etc/passwd", grpc.StatusCode.INVALID_ARGUMENT),
        (META, "", grpc.StatusCode.INVALID_ARGUMENT),
        (META, "99.root.json", grpc.StatusCode.NOT_FOUND),
        (TARGET, "bundles", grpc.StatusCode.NOT_FOUND),
        (device_pb2.FILE_KIND_UNSPECIFIED, "root.json", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_fetch_file_refuses_paths_outside_or_missing(
    plane: RunningPlane, kind: int, path: str, code: grpc.StatusCode
) -> None:
    stub = _device_stub(plane, plane.operator())
    (plane.home.tuf / "targets" / "bundles").mkdir(parents=True, exist_ok=True)
    assert (
        _code(lambda: list(stub.FetchFile(device_pb2.FetchFileRequest(kind=kind, path=path))))
        == code
    )


def test_fetch_file_offset_past_end_is_out_of_range(plane: RunningPlane) -> None:
    stub = _device_stub(plane, plane.operator())
    req = device_pb2.FetchFileRequest(kind=META, path="1.root.json", offset=10**9)
    assert _code(lambda: list(stub.FetchFile(req))) == grpc.StatusCode.OUT_OF_RANGE


def test_symlink_out_of_the_repository_is_refused(plane: RunningPlane) -> None:
    link = plane.home.tuf / "metadata" / "evil.json"
    link.symlink_to(plane.home.server_key)
    try:
        stub = _device_stub(plane, plane.operator())
        req = device_pb2.FetchFileRequest(kind=META, path="evil.json")
        assert _code(lambda: list(stub.FetchFile(req))) == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        link.unlink()


# --------------------------------------------------------------------------- identity
def test_no_client_certificate_is_refused(plane: RunningPlane) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=plane.home.ca_cert.read_bytes())
    stub = device_pb2_grpc.DeviceServiceStub(grpc.secure_channel(plane.address, creds))
    code = _code(lambda: stub.GetDesiredState(device_pb2.GetDesiredStateRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_is_refused(plane: RunningPlane, tmp_path: Path) -> None:
    other = FleetCA.create("rogue").issue_device("robot-1")
    crt, key = other.write(tmp_path, "rogue")
    creds = ClientCredentials("robot-1", crt, key, plane.home.ca_cert)
    stub = _device_stub(plane, creds)
    code = _code(lambda: stub.GetDesiredState(device_pb2.GetDesiredStateRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_expired_certificate_is_refused(plane: RunningPlane, tmp_path: Path) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    old = plane.home.load_ca().issue_device("robot-old", valid_days=-1, not_before=past)
    from cloud.pki import fingerprint

    plane.store.add_device("robot-old", fingerprint(old.cert_pem))
    crt, key = old.write(tmp_path, "old")
    stub = _device_stub(plane, ClientCredentials("robot-old", crt, key, plane.home.ca_cert))
    code = _code(lambda: stub.GetDesiredState(device_pb2.GetDesiredStateRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_unregistered_device_certificate_is_unauthenticated(
    plane: RunningPlane, tmp_path: Path
) -> None:
    crt, key = plane.home.load_ca().issue_device("robot-ghost").write(tmp_path, "ghost")
    stub = _device_stub(plane, ClientCredentials("robot-ghost", crt, key, plane.home.ca_cert))
    code = _code(lambda: stub.GetDesiredState(device_pb2.GetDesiredStateRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_revoked_device_is_refused_from_the_next_call(plane: RunningPlane) -> None:
    creds = _device_from_cli(plane, "robot-revoked")
    stub = _device_stub(plane, creds)
    stub.GetDesiredState(device_pb2.GetDesiredStateRequest())
    result = CliRunner().invoke(
        cloud, ["device", "revoke", "robot-revoked", "--home", str(plane.home.root)]
    )
    assert result.exit_code == 0, result.output
    with pytest.raises(grpc.RpcError) as err:
        stub.GetDesiredState(device_pb2.GetDesiredStateRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (err.value.details() or "")


def test_device_calling_admin_rpc_is_permission_denied(plane: RunningPlane) -> None:
    stub = _admin_stub(plane, plane.device("robot-nosy"))
    with pytest.raises(grpc.RpcError) as err:
        stub.ListDevices(admin_pb2.ListDevicesRequest())
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "operator certificate" in (err.value.details() or "")


def test_operator_calling_device_rpc_is_permission_denied(plane: RunningPlane) -> None:
    stub = _device_stub(plane, plane.operator())
    code = _code(lambda: stub.GetDesiredState(device_pb2.GetDesiredStateRequest()))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_viewer_can_read_but_not_publish(plane: RunningPlane, tmp_path: Path) -> None:
    stub = _admin_stub(plane, plane.operator("vera", "viewer"))
    stub.ListBundles(admin_pb2.ListBundlesRequest())
    with pytest.raises(grpc.RpcError) as err:
        stub.PublishBundle(admin_pb2.PublishBundleRequest(efb=b"x"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "role 'admin'" in (err.value.details() or "")


def test_device_cannot_report_inventory_for_another_device(plane: RunningPlane) -> None:
    stub = _device_stub(plane, plane.device("robot-inv"))
    stub.ReportInventory(device_pb2.Inventory(runtime_version="0.3.0", hardware_tags=["cpu"]))
    dev = plane.store.require_device("robot-inv")
    assert dev.runtime_version == "0.3.0" and dev.hardware_tags == ["cpu"]
    code = _code(lambda: stub.ReportInventory(device_pb2.Inventory(device_id="robot-1")))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_a_malformed_reported_bundle_is_refused_naming_the_field(plane: RunningPlane) -> None:
    stub = _device_stub(plane, plane.device("robot-inv2"))
    good = common_pb2.BundleRef(name="pendulum", version="1.0.0", sequence=3)
    stub.ReportInventory(device_pb2.Inventory(active_bundle=good))
    stored = plane.store.require_device("robot-inv2").active_bundle
    assert stored is not None and stored["sequence"] == 3 and stored["policy_sha256"] == ""
    bad = common_pb2.BundleRef(name="pendulum", version="1.0.0", policy_sha256="f" * 65)
    with pytest.raises(grpc.RpcError) as err:
        stub.ReportInventory(device_pb2.Inventory(pending_bundle=bad))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inventory pending_bundle: bundle policy_sha256" in (err.value.details() or "")
    assert plane.store.require_device("robot-inv2").active_bundle == stored


def test_oversized_request_is_refused(plane: RunningPlane) -> None:
    stub = _admin_stub(plane, plane.operator())
    code = _code(lambda: stub.PublishBundle(admin_pb2.PublishBundleRequest(efb=b"\0" * 300_000)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


# --------------------------------------------------------------------------- admin API
def test_list_devices_filters_by_label_and_pages(plane: RunningPlane) -> None:
    for i in range(5):
        plane.device(f"arm-{i}", {"fleet": "pages", "kind": "arm" if i % 2 else "cart"})
    stub = _admin_stub(plane, plane.operator())
    req = admin_pb2.ListDevicesRequest(label_selector="fleet=pages,kind=cart")
    req.page.page_size = 2
    first = stub.ListDevices(req)
    assert [d.id for d in first.devices] == ["arm-0", "arm-2"] and first.total == 3
    req.page.page_token = first.next_page_token
    second = stub.ListDevices(req)
    assert [d.id for d in second.devices] == ["arm-4"] and not second.next_page_token
    assert stub.GetDevice(admin_pb2.GetDeviceRequest(id="arm-1")).labels["kind"] == "arm"
    assert _code(lambda: stub.GetDevice(admin_pb2.GetDeviceRequest(id="nope"))) == (
        grpc.StatusCode.NOT_FOUND
    )
    bad = admin_pb2.ListDevicesRequest(label_selector="justakey")
    assert _code(lambda: stub.ListDevices(bad)) == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_fleet_sends_snapshot_then_changes(plane: RunningPlane) -> None:
    plane.device("watch-1", {"fleet": "watch"})
    stub = _admin_stub(plane, plane.operator())
    call = stub.WatchFleet(admin_pb2.WatchFleetRequest(label_selector="fleet=watch"), timeout=30)
    events: list[admin_pb2.FleetEvent] = []
    done = threading.Event()

    def reader() -> None:
        try:
            for ev in call:
                events.append(ev)
                if ev.kind == admin_pb2.FleetEvent.KIND_UPSERT and ev.device.online:
                    done.set()
                    return
        except grpc.RpcError:
            pass

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    wait_until(
        lambda: any(e.kind == admin_pb2.FleetEvent.KIND_SNAPSHOT_DONE for e in events),
        10,
        "snapshot",
    )
    plane.device("other-1", {"fleet": "elsewhere"})  # filtered out
    # Written through another Store, as `cloud ingest` in its own process would.
    other = Store.open(plane.home.database_url())
    try:
        other.set_online("watch-1", True)
    finally:
        other.close()
    assert done.wait(10)
    call.cancel()
    t.join(5)
    kinds = [(e.kind, e.device.id) for e in events]
    assert kinds[0] == (admin_pb2.FleetEvent.KIND_SNAPSHOT, "watch-1")
    assert kinds[1][0] == admin_pb2.FleetEvent.KIND_SNAPSHOT_DONE
    assert all(e.device.id != "other-1" for e in events)


def test_rollout_rpcs_say_unimplemented_without_an_engine(tmp_path: Path) -> None:
    with running_plane(tmp_path / "plane", factories=[]) as bare:
        stub = _admin_stub(bare, bare.operator())
        with pytest.raises(grpc.RpcError) as err:
            stub.ListRollouts(admin_pb2.ListRolloutsRequest())
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "rollouts are not enabled" in (err.value.details() or "")


def test_default_plane_serves_rollouts(plane: RunningPlane) -> None:
    stub = _admin_stub(plane, plane.operator())
    assert isinstance(stub.ListRollouts(admin_pb2.ListRolloutsRequest()).rollouts, Sequence)


def test_health_and_reflection_are_served(plane: RunningPlane) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    ch = plane.channel(plane.operator())
    status = health_pb2_grpc.HealthStub(ch).Check(
        health_pb2.HealthCheckRequest(service="edgeflux.device.v1.DeviceService")
    )
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    replies = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"edgeflux.device.v1.DeviceService", "edgeflux.admin.v1.FleetAdminService"} <= names


# --------------------------------------------------------------------------- publishing
def _snapshot(plane: RunningPlane) -> tuple[int, bytes, list[str]]:
    tuf = plane.home.tuf
    return (
        plane.store.count_bundles(),
        (tuf / "metadata" / "timestamp.json").read_bytes(),
        sorted(str(p.relative_to(tuf)) for p in tuf.rglob("*") if p.is_file()),
    )


def test_publish_over_grpc_and_refusals_leave_everything_unchanged(
    plane: RunningPlane, tmp_path: Path
) -> None:
    key = _signing_key(plane)
    stub = _admin_stub(plane, plane.operator())

    def efb(bundle: Path) -> bytes:
        return pack_bundle(bundle, bundle.with_suffix(".efb")).read_bytes()

    good = make_bundle(tmp_path / "good", key, name="cartpole", version="2.0.0", sequence=5)
    reply = stub.PublishBundle(admin_pb2.PublishBundleRequest(efb=efb(good)))
    assert reply.bundle.ref.sequence == 5 and reply.bundle.target_path.endswith("2.0.0.efb")
    listed = stub.ListBundles(admin_pb2.ListBundlesRequest(name="cartpole"))
    assert [b.ref.version for b in listed.bundles] == ["2.0.0"]
    before = _snapshot(plane)

    unsigned = make_bundle(
        tmp_path / "unsigned", None, name="cartpole", version="2.1.0", sequence=6
    )
    tampered = make_bundle(tmp_path / "tampered", key, name="cartpole", version="2.2.0", sequence=7)
    (tampered / "policy.onnx").write_bytes((tampered / "policy.onnx").read_bytes() + b"\0")
    rolled_back = make_bundle(
        tmp_path / "rolled", key, name="cartpole", version="2.3.0", sequence=4
    )
    same_version = make_bundle(
        tmp_path / "same", key, name="cartpole", version="2.0.0", sequence=9, seed=3
    )
    other_key = tmp_path / "other.pem"
    from runtime.bundle import generate_signing_key

    generate_signing_key(other_key, tmp_path / "other.pub")
    foreign = make_bundle(
        tmp_path / "foreign", other_key, name="cartpole", version="2.4.0", sequence=8
    )
    cases = [
        (unsigned, grpc.StatusCode.FAILED_PRECONDITION, "model.sig"),
        (tampered, grpc.StatusCode.FAILED_PRECONDITION, "policy.onnx"),
        (rolled_back, grpc.StatusCode.FAILED_PRECONDITION, "sequence 4"),
        (same_version, grpc.StatusCode.ALREADY_EXISTS, "already published"),
        (foreign, grpc.StatusCode.FAILED_PRECONDITION, "refused"),
    ]
    for bundle, code, words in cases:
        raw = bundle in (tampered, unsigned)
        payload = _tar_without_checks(bundle) if raw else efb(bundle)
        with pytest.raises(grpc.RpcError) as err:
            stub.PublishBundle(admin_pb2.PublishBundleRequest(efb=payload))
        assert err.value.code() == code, (bundle.name, err.value.details())
        assert words in (err.value.details() or ""), err.value.details()
        assert _snapshot(plane) == before, bundle.name
    garbage = stub.PublishBundle
    with pytest.raises(grpc.RpcError) as err:
        garbage(admin_pb2.PublishBundleRequest(efb=b"not a tar at all"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _snapshot(plane) == before


def _tar_without_checks(bundle: Path) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(bundle.iterdir()):
            tar.add(p, arcname=p.name)
    return buf.getvalue()


def test_two_concurrent_publishes_of_one_version_have_exactly_one_winner(
    plane: RunningPlane, tmp_path: Path
) -> None:
    key = _signing_key(plane)
    a = make_bundle(tmp_path / "a", key, name="race", version="1.0.0", sequence=1, seed=1)
    b = make_bundle(tmp_path / "b", key, name="race", version="1.0.0", sequence=2, seed=2)
    payloads = [pack_bundle(x, x.with_suffix(".efb")).read_bytes() for x in (a, b)]
    stub = _admin_stub(plane, plane.operator())
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def go(payload: bytes) -> None:
        barrier.wait()
        try:
            stub.PublishBundle(admin_pb2.PublishBundleRequest(efb=payload))
            outcomes.append("won")
        except grpc.RpcError as exc:
            outcomes.append(exc.code().name)

    threads = [threading.Thread(target=go, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) in (["ALREADY_EXISTS", "won"], ["FAILED_PRECONDITION", "won"])
    rows = plane.store.list_bundles("race")
    assert len(rows) == 1
    targets = plane.store  # the TUF repo names exactly the winner
    from cloud.tuf_repo import TufRepository

    tuf_targets = TufRepository(plane.home.tuf).targets()
    assert tuf_targets["bundles/race-1.0.0.efb"].hashes["sha256"] == rows[0].efb_sha256
    assert targets.count_bundles() >= 1


def test_timestamp_is_resigned_on_schedule(tmp_path: Path) -> None:
    from cloud.tuf_repo import TufRepository

    with running_plane(
        tmp_path / "plane", overrides={"timestamp_expiry_s": 120, "timestamp_refresh_s": 1}
    ) as p:
        repo = TufRepository(p.home.tuf)
        first = repo.timestamp_expires()

        def version() -> int:
            from tuf.api.metadata import Metadata

            return int(
                Metadata.from_bytes(
                    (p.home.tuf / "metadata" / "timestamp.json").read_bytes()
                ).signed.version
            )

        start = version()
        wait_until(lambda: version() >= start + 2, 15, "two timestamp re-signings")
        left = (repo.timestamp_expires() - dt.datetime.now(dt.UTC)).total_seconds()
        assert 60 < left <= 121, "re-signed with the configured 120 s lifetime"
        assert first != repo.timestamp_expires()


def test_revoked_operator_is_refused(plane: RunningPlane) -> None:
    stub = _admin_stub(plane, plane.operator("olga", "viewer"))
    stub.ListBundles(admin_pb2.ListBundlesRequest())
    result = CliRunner().invoke(
        cloud, ["operator", "revoke", "olga", "--home", str(plane.home.root)]
    )
    assert result.exit_code == 0, result.output
    code = _code(lambda: stub.ListBundles(admin_pb2.ListBundlesRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_embedded_broker_carries_mqtt_in_dev_mode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    caplog.set_level("WARNING", logger="cloud.broker")
    with running_plane(tmp_path / "plane", broker=True) as p:
        assert "DEV MODE" in caplog.text
        got: list[bytes] = []
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sub")
        sub.on_message = lambda c, u, m: got.append(m.payload)
        sub.connect("127.0.0.1", p.broker_port)
        sub.subscribe("edgeflux/v1/devices/+/telemetry", qos=1)
        sub.loop_start()
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pub")
        pub.connect("127.0.0.1", p.broker_port)
        pub.loop_start()
        try:

            def delivered() -> bool:
                pub.publish("edgeflux/v1/devices/r1/telemetry", b"hello", qos=1)
                return bool(got)

            wait_until(delivered, 15, "a message through the embedded broker")
            assert got[0] == b"hello"
        finally:
            for c in (pub, sub):
                c.loop_stop()
                c.disconnect()


def test_shutdown_ends_watch_streams_cleanly(tmp_path: Path) -> None:
    with running_plane(tmp_path / "plane") as p:
        stub = _admin_stub(p, p.operator())
        call = stub.WatchFleet(admin_pb2.WatchFleetRequest(), timeout=30)
        first = next(call)
        assert first.kind == admin_pb2.FleetEvent.KIND_SNAPSHOT_DONE
        p.stop(5.0)
        assert list(call) == []  # the stream ended with OK, not an error
        assert call.code() == grpc.StatusCode.OK


def test_plane_ingests_telemetry_from_its_embedded_broker(tmp_path: Path) -> None:
    import paho.mqtt.client as mqtt
    from google.protobuf.timestamp_pb2 import Timestamp
    from paho.mqtt.enums import CallbackAPIVersion

    from protos import telemetry_pb2

    with running_plane(tmp_path / "plane", broker=True, ingest=True) as p:
        p.device("robot-7")
        batch = telemetry_pb2.TelemetryBatch(device_id="robot-7", sequence=1)
        at = Timestamp()
        at.GetCurrentTime()
        batch.points.add(at=at, loop_p99_ms=4.5, ticks=10)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="robot-7")
        pub.connect("127.0.0.1", p.broker_port)
        pub.loop_start()
        try:
            info = pub.publish(
                "edgeflux/v1/devices/robot-7/telemetry", batch.SerializeToString(), qos=1
            )
            info.wait_for_publish(10)
            wait_until(lambda: bool(p.store.telemetry("robot-7")), 15, "ingested telemetry")
        finally:
            pub.loop_stop()
            pub.disconnect()
        assert p.store.telemetry("robot-7")[0].loop_p99_ms == 4.5


def test_calls_beyond_the_concurrency_cap_are_refused(tmp_path: Path) -> None:
    with running_plane(tmp_path / "plane", overrides={"max_concurrent_rpcs": 1}) as p:
        stub = _admin_stub(p, p.operator())
        watch = stub.WatchFleet(admin_pb2.WatchFleetRequest(), timeout=30)
        assert next(watch).kind == admin_pb2.FleetEvent.KIND_SNAPSHOT_DONE  # holds the slot
        code = _code(lambda: stub.ListBundles(admin_pb2.ListBundlesRequest(), timeout=10))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        watch.cancel()
        wait_until(
            lambda: _ok(lambda: stub.ListBundles(admin_pb2.ListBundlesRequest(), timeout=10)),
            15,
            "the slot to free up",
        )


def _ok(call: object) -> bool:
    try:
        call()  # type: ignore[operator]
        return True
    except grpc.RpcError:
        return False
