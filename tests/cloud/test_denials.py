"""A refused gRPC call names the service that refused it (real plane, mTLS)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from cloud.testing import running_plane
from protos import attestation_pb2, attestation_pb2_grpc, router_pb2, router_pb2_grpc


def test_denials_name_the_service_that_refused(tmp_path: Path) -> None:
    with running_plane(tmp_path / "plane") as plane:
        robot, admin = plane.device("robot-1"), plane.operator()
        with plane.channel(robot) as ch, pytest.raises(grpc.RpcError) as err:
            attestation_pb2_grpc.AttestationServiceStub(ch).ListAttestations(
                attestation_pb2.ListAttestationsRequest(), timeout=10
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "AttestationService needs an operator certificate" in (err.value.details() or "")
        assert "FleetAdminService" not in (err.value.details() or "")
        with plane.channel(admin) as ch, pytest.raises(grpc.RpcError) as err:
            router_pb2_grpc.RouterServiceStub(ch).Route(router_pb2.RouteRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "RouterService serves device certificates only" in (err.value.details() or "")
        with plane.channel(robot) as ch, pytest.raises(grpc.RpcError) as err:
            router_pb2_grpc.RouterServiceStub(ch).RouterStats(
                router_pb2.RouterStatsRequest(), timeout=10
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "RouterService needs an operator certificate" in (err.value.details() or "")


def test_the_planes_mqtt_certificates_cannot_call_grpc(tmp_path: Path) -> None:
    """A session-close certificate carries a device's subject (the broker must take it
    for that device) but not its registered fingerprint; a service certificate says
    what it is in its organisational unit. The plane refuses both."""
    from cloud.home import INGEST_IDENTITY
    from cloud.testing import ClientCredentials
    from protos import device_pb2, device_pb2_grpc

    with running_plane(tmp_path / "plane") as plane:
        plane.device("robot-1")
        ca = plane.home.load_ca()
        closer = ca.issue_session_closer("robot-1")
        crt, key = closer.write(tmp_path / "closer", "robot-1")
        scrt, skey = plane.home.service_identity(INGEST_IDENTITY)
        for creds, why in (
            (ClientCredentials("robot-1", crt, key, plane.home.ca_cert), "revoked or replaced"),
            (ClientCredentials(INGEST_IDENTITY, scrt, skey, plane.home.ca_cert), "OU=service"),
        ):
            with plane.channel(creds) as ch, pytest.raises(grpc.RpcError) as err:
                device_pb2_grpc.DeviceServiceStub(ch).GetDesiredState(
                    device_pb2.GetDesiredStateRequest(), timeout=10
                )
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, why
            assert why in (err.value.details() or "")
