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
