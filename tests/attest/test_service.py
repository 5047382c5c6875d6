"""AttestationService on a real control plane (grpc.aio, mTLS, SQLite store), and the
robot's `require_parity_attestation` decision fetched over that gRPC service."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from cloud.attest import statement
from cloud.attest.service import record_from_envelope
from cloud.store.attestations import AttestationStore
from cloud.testing import running_plane
from fleet import attestation as fa
from protos import attestation_pb2, attestation_pb2_grpc, common_pb2
from runtime.bundle import create_bundle, sign_bundle, verify_bundle
from runtime.trust import TrustStore
from tests.attest.conftest import linear_pendulum_policy, pendulum_manifest


def _bundle(tmp: Path, home, name: str, gain: float = 1.0) -> Path:
    src = linear_pendulum_policy(tmp / f"{name}.onnx", gain=gain)
    bdir = create_bundle(src, pendulum_manifest(name), tmp / name)
    sign_bundle(bdir, home.key_path("model-signing", private=True))
    return bdir


def _attest(home, bdir: Path, verdict: str = "attested", days: float = 30) -> bytes:
    vb = verify_bundle(bdir, TrustStore(home.trust))
    now = datetime.now(UTC)
    stmt = statement.build_statement(
        policy_sha256=vb.policy_sha256,
        root_digest=vb.root_digest,
        bundle_name=vb.manifest.name,
        predicate={
            "verdict": verdict,
            "bundle": {"name": vb.manifest.name, "version": "1.0.0", "sequence": 1},
        },
        issued_at=now - timedelta(minutes=1),
        expires_at=now + timedelta(days=days),
    )
    key = statement.load_key(home.key_path("attestation", private=True))
    return statement.envelope_bytes(statement.sign_statement(stmt, key))


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with running_plane(tmp_path_factory.mktemp("plane")) as p:
        yield p


def _store(plane, raw: bytes) -> None:
    trusted = TrustStore(plane.home.trust).public_keys("attestation")
    AttestationStore(plane.store.engine).put(record_from_envelope(raw, trusted, created_by="t"))


def test_device_fetches_attestation_and_policy_accepts_attested_bundle(plane, tmp_path) -> None:
    bdir = _bundle(tmp_path, plane.home, "good")
    _store(plane, _attest(plane.home, bdir))
    vb = verify_bundle(bdir, TrustStore(plane.home.trust))
    robot = plane.device("robot-att-1")
    trusted = TrustStore(plane.home.trust).public_keys("attestation")
    with plane.channel(robot) as ch:
        decision = fa.check_activation(
            fa.AttestationPolicy(require_parity_attestation=True),
            policy_sha256=vb.policy_sha256,
            root_digest=vb.root_digest,
            fetch=fa.grpc_fetcher(ch),
            trusted_keys=trusted,
        )
    assert decision.allowed and decision.reason == "attested", decision.message


def test_policy_refuses_unattested_and_negative_verdict_bundles(plane, tmp_path) -> None:
    trusted = TrustStore(plane.home.trust).public_keys("attestation")
    none_dir = _bundle(tmp_path, plane.home, "none", 0.3)
    unattested = verify_bundle(none_dir, TrustStore(plane.home.trust))
    weak_dir = _bundle(tmp_path, plane.home, "weak", 0.7)
    _store(plane, _attest(plane.home, weak_dir, verdict="not_attested"))
    weak = verify_bundle(weak_dir, TrustStore(plane.home.trust))
    robot = plane.device("robot-att-2")
    policy = fa.AttestationPolicy(require_parity_attestation=True)
    with plane.channel(robot) as ch:
        fetch = fa.grpc_fetcher(ch)
        missing = fa.check_activation(
            policy,
            policy_sha256=unattested.policy_sha256,
            root_digest=unattested.root_digest,
            fetch=fetch,
            trusted_keys=trusted,
        )
        negative = fa.check_activation(
            policy,
            policy_sha256=weak.policy_sha256,
            root_digest=weak.root_digest,
            fetch=fetch,
            trusted_keys=trusted,
        )
    assert (missing.allowed, missing.reason) == (False, "missing")
    assert (negative.allowed, negative.reason) == (False, "verdict")


def test_get_attestation_rejects_bad_digest_and_unknown_digest(plane) -> None:
    robot = plane.device("robot-att-3")
    with plane.channel(robot) as ch:
        stub = attestation_pb2_grpc.AttestationServiceStub(ch)
        with pytest.raises(grpc.RpcError) as bad:
            stub.GetAttestation(attestation_pb2.GetAttestationRequest(subject_sha256="xyz"))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as unknown:
            stub.GetAttestation(attestation_pb2.GetAttestationRequest(subject_sha256="0" * 64))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_valid_attestation_is_served_over_a_later_inconclusive_one(plane, tmp_path) -> None:
    bdir = _bundle(tmp_path, plane.home, "rerun", 1.1)
    good = _attest(plane.home, bdir)
    _store(plane, good)
    _store(plane, _attest(plane.home, bdir, verdict="underpowered"))
    vb = verify_bundle(bdir, TrustStore(plane.home.trust))
    with plane.channel(plane.device("robot-att-4")) as ch:
        reply = attestation_pb2_grpc.AttestationServiceStub(ch).GetAttestation(
            attestation_pb2.GetAttestationRequest(subject_sha256=vb.policy_sha256)
        )
    assert reply.verdict == "attested" and reply.envelope.dsse_json == good
    assert reply.bundle.oms_root_digest == vb.root_digest


def test_list_attestations_is_for_operators_only(plane, tmp_path) -> None:
    bdir = _bundle(tmp_path, plane.home, "listed", 1.2)
    _store(plane, _attest(plane.home, bdir))
    with plane.channel(plane.operator("viewer", role="viewer")) as ch:
        stub = attestation_pb2_grpc.AttestationServiceStub(ch)
        page = stub.ListAttestations(
            attestation_pb2.ListAttestationsRequest(
                bundle_name="listed", page=common_pb2.PageRequest(page_size=10)
            )
        )
    assert [a.bundle.name for a in page.attestations] == ["listed"]
    with (
        plane.channel(plane.device("robot-att-5")) as ch,
        pytest.raises(grpc.RpcError) as denied,
    ):
        attestation_pb2_grpc.AttestationServiceStub(ch).ListAttestations(
            attestation_pb2.ListAttestationsRequest()
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_run_parity_campaign_streams_progress_and_stores_the_result(plane, tmp_path) -> None:
    bdir = _bundle(tmp_path, plane.home, "campaigned", 1.3)
    rec = plane.publish(bdir)
    campaign_toml = (
        '[campaign]\nname = "remote"\nworkers = 1\nparity_inputs = 32\n'
        '[[task]]\nname = "nominal"\nepisodes = 4\ncalibration_episodes = 4\n'
    )
    with plane.channel(plane.operator()) as ch:
        stub = attestation_pb2_grpc.AttestationServiceStub(ch)
        updates = list(
            stub.RunParityCampaign(
                attestation_pb2.RunParityCampaignRequest(
                    bundle=common_pb2.BundleRef(name=rec.name, version=rec.version),
                    campaign_toml=campaign_toml,
                ),
                timeout=120,
            )
        )
        assert [u.stage for u in updates[:-1]].count("evaluation") >= 1
        final = updates[-1].result
        # 4 pairs is below the 30-pair minimum: a gate fails, so nothing is attested.
        assert final.verdict == "not_attested" and final.subject_sha256 == rec.policy_sha256
        served = stub.GetAttestation(
            attestation_pb2.GetAttestationRequest(subject_sha256=rec.policy_sha256)
        )
        assert served.envelope.dsse_json == final.envelope.dsse_json
        with pytest.raises(grpc.RpcError) as bad:
            list(
                stub.RunParityCampaign(
                    attestation_pb2.RunParityCampaignRequest(
                        bundle=common_pb2.BundleRef(name=rec.name, version=rec.version),
                        campaign_toml="[campaign]\nname = 3\n",
                    )
                )
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with (
        plane.channel(plane.operator("viewer", role="viewer")) as ch,
        pytest.raises(grpc.RpcError) as denied,
    ):
        list(
            attestation_pb2_grpc.AttestationServiceStub(ch).RunParityCampaign(
                attestation_pb2.RunParityCampaignRequest(campaign_toml=campaign_toml)
            )
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_second_run_of_a_running_campaign_is_refused(plane, tmp_path) -> None:
    rec = plane.publish(_bundle(tmp_path, plane.home, "busy", 1.4))
    request = attestation_pb2.RunParityCampaignRequest(
        bundle=common_pb2.BundleRef(name=rec.name, version=rec.version),
        campaign_toml=(
            '[campaign]\nname = "busy"\nworkers = 1\nparity_inputs = 16\n'
            '[[task]]\nname = "t"\nepisodes = 4\ncalibration_episodes = 4\n'
        ),
    )
    with plane.channel(plane.operator()) as ch:
        stub = attestation_pb2_grpc.AttestationServiceStub(ch)
        first = stub.RunParityCampaign(request, timeout=120)
        assert next(first).stage  # the first run has started
        with pytest.raises(grpc.RpcError) as busy:
            list(stub.RunParityCampaign(request, timeout=30))
        assert busy.value.code() == grpc.StatusCode.ABORTED
        assert list(first)[-1].result.subject_sha256 == rec.policy_sha256
