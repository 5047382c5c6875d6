"""The plane's `campaign_executor` setting: RunParityCampaign over real gRPC runs a
campaign's units on a real Ray cluster (a head and a worker node, one CPU each), and
signs the statement the local pool signs; a bad setting stops the plane's start."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud.attest.statement import verify_envelope
from cloud.home import init_home
from cloud.server.app import ControlPlane, PlaneStartError
from cloud.testing import RunningPlane, running_plane
from protos import attestation_pb2, attestation_pb2_grpc, common_pb2
from runtime.bundle import create_bundle, sign_bundle
from runtime.trust import TrustStore
from tests.attest.conftest import energy_pendulum_policy, pendulum_manifest
from tests.attest.test_ray_executor import _differences, _timeless, _units
from tests.servers import RayCluster, run_ray_cluster

CAMPAIGN = """
[campaign]
name = "plane-ray"
workers = 1
chunk = 3
min_pairs = 12
parity_inputs = 32
teacher = "tests.attest.test_plane_ray:marking_teacher"

[[task]]
name = "nominal"
episodes = 12
calibration_episodes = 6
"""
MARK_ENV = "EDGEFLUX_TEST_RAY_MARK_DIR"  # set on the cluster's nodes only


def marking_teacher(env_id: str, variant: object) -> Any:
    """The energy teacher; on a cluster node it also leaves a file named by its process."""
    mark = os.environ.get(MARK_ENV)
    if mark is not None:
        (Path(mark) / str(os.getpid())).touch()
    from tests.attest.conftest import EnergyTeacher

    return EnergyTeacher()


@pytest.fixture(scope="module")
def marks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("marks")


@pytest.fixture(scope="module")
def cluster(marks: Path) -> Iterator[RayCluster]:
    """One cluster for every test here (starting one takes about 15 s)."""
    with run_ray_cluster(nodes=2, cpus_per_node=1, env={MARK_ENV: str(marks)}) as c:
        yield c


def _campaign(plane: RunningPlane, name: str, version: str) -> dict[str, Any]:
    """RunParityCampaign over gRPC; the verified statement and the units' result files."""
    with plane.channel(plane.operator()) as ch:
        updates = list(
            attestation_pb2_grpc.AttestationServiceStub(ch).RunParityCampaign(
                attestation_pb2.RunParityCampaignRequest(
                    bundle=common_pb2.BundleRef(name=name, version=version),
                    campaign_toml=CAMPAIGN,
                ),
                timeout=300,
            )
        )
    final = updates[-1]
    assert final.stage == "done", [u.stage for u in updates]
    trusted = TrustStore(plane.home.trust).public_keys("attestation")
    signed = verify_envelope(final.result.envelope.dsse_json, trusted)
    (work,) = (plane.home.state / "campaigns").iterdir()
    return {"statement": signed.statement, "units": _units(work), "work": work}


def test_a_plane_set_to_a_ray_cluster_signs_the_statement_the_local_pool_signs(
    cluster: RayCluster, marks: Path, tmp_path: Path
) -> None:
    home = init_home(tmp_path / "home")
    src = energy_pendulum_policy(tmp_path / "e.onnx")
    bdir = create_bundle(src, pendulum_manifest(), tmp_path / "b")
    sign_bundle(bdir, home.key_path("model-signing", private=True))
    with running_plane(home.root) as plane:  # campaign_executor = "local" (the default)
        assert plane.control.config.campaign_executor == "local"
        rec = plane.publish(bdir)
        local = _campaign(plane, rec.name, rec.version)
    assert not list(marks.iterdir()), "the local run used the cluster"
    shutil.rmtree(local["work"])  # the replica on the cluster must run every unit again
    with running_plane(home.root, overrides={"campaign_executor": cluster.address}) as plane:
        on_ray = _campaign(plane, rec.name, rec.version)
    assert list(marks.iterdir()), "no unit ran on the cluster"
    assert list(on_ray["units"]) == ["nominal.0000.json", "nominal.0001.json",
                                     "nominal.0002.json", "nominal.0003.json",
                                     "nominal.cal.json"]  # fmt: skip
    assert on_ray["units"] == local["units"]
    assert on_ray["statement"]["predicate"]["verdict"] == "attested"
    assert not _differences(_timeless(on_ray["statement"]), _timeless(local["statement"]))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("spark://head:1", "expected 'local' or 'ray://HOST:PORT'"),
        ("ray://head", "expected ray://HOST:PORT"),
        ("ray://head:0", "port 0 is not in 1..65535"),
    ],
)
def test_a_bad_campaign_executor_is_a_start_error_naming_the_file_and_field(
    tmp_path: Path, value: str, reason: str
) -> None:
    home = init_home(tmp_path / "home")
    text = home.config_file.read_text()
    home.config_file.write_text(text + f'campaign_executor = "{value}"\n')
    control = ControlPlane(home, {"grpc_port": 0}, broker=False)
    assert control.config.campaign_executor == value
    with pytest.raises(PlaneStartError) as err:
        asyncio.run(control.start())
    message = str(err.value)
    assert str(home.config_file) in message and "campaign_executor" in message, message
    assert reason in message and "--executor" not in message, message
    assert control.server is None  # it stopped before serving anything
