"""Campaign executors: the local process pool and a real Ray cluster (a head and one
worker node started here with `ray start`) give the same results for the same seeds."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from cloud.attest import campaign
from cloud.attest.executors import (
    ExecutorError,
    LocalExecutor,
    RayExecutor,
    _pack,
    _unpack,
    parse_executor,
)
from cloud.attest.statement import verify_envelope
from tests.servers import free_port, run_ray_cluster

DIE_ENV = "EDGEFLUX_TEST_RAY_DIE_DIR"  # set on the cluster's nodes only

CAMPAIGN = """
[campaign]
name = "ray"
workers = 2
chunk = 3
min_pairs = 12
parity_inputs = 32
teacher = "tests.attest.conftest:energy_teacher"

[[task]]
name = "nominal"
episodes = 12
calibration_episodes = 6
"""
TIMES = {"created_at", "evaluation_started_at", "fixed_at", "issued_at", "expires_at"}


STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?")


def _timeless(obj: Any) -> Any:
    """`obj` without when it was made: time fields dropped, times in texts blanked."""
    if isinstance(obj, dict):
        return {k: _timeless(v) for k, v in obj.items() if k not in TIMES}
    if isinstance(obj, list):
        return [_timeless(v) for v in obj]
    return STAMP.sub("<time>", obj) if isinstance(obj, str) else obj


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(a.keys() | b.keys())
                for d in _differences(a.get(k), b.get(k), f"{path}.{k}")]  # fmt: skip
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _units(workdir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((workdir / "units").glob("*.json"))}


def _episodes(workdir: Path) -> dict[str, Any]:
    """Every per-episode number of every unit (what the arms did, not how they are named)."""
    arms = ("teacher", "student", "random")
    return {
        name: {a: json.loads(raw).get(a) for a in arms} for name, raw in _units(workdir).items()
    }


# ----------------------------------------------------------------------------- parsing


def test_executor_values_are_parsed_or_refused_with_the_reason() -> None:
    local = parse_executor("local", 3)
    assert isinstance(local, LocalExecutor) and local.workers == 3
    if _has_ray():
        ray = parse_executor("ray://head.example:10001", 1)
        assert isinstance(ray, RayExecutor) and (ray.host, ray.port) == ("head.example", 10001)
        v6 = parse_executor("ray://[::1]:10001", 1)
        assert isinstance(v6, RayExecutor) and v6.host == "::1" and v6.label == "ray://[::1]:10001"
    for bad, reason in (
        ("", "expected 'local' or 'ray://HOST:PORT'"),
        ("Local", "expected 'local' or 'ray://HOST:PORT'"),
        ("spark://h:1", "expected 'local' or 'ray://HOST:PORT'"),
        ("head:10001", "expected 'local' or 'ray://HOST:PORT'"),
        ("ray://", "expected ray://HOST:PORT"),
        ("ray://head", "expected ray://HOST:PORT"),
        ("ray://head:", "expected ray://HOST:PORT"),
        ("ray://head:port", "expected ray://HOST:PORT"),
        ("ray://head:10001/x", "expected ray://HOST:PORT"),
        ("ray://-head:1", "expected ray://HOST:PORT"),
        ("ray://head:0", "port 0 is not in 1..65535"),
        ("ray://head:70000", "port 70000 is not in 1..65535"),
    ):
        with pytest.raises(ExecutorError, match=reason):
            parse_executor(bad, 1)


def _has_ray() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


@given(st.text(max_size=40))
def test_any_executor_text_is_an_executor_or_one_specific_error(text: str) -> None:
    try:
        got = parse_executor(text, 1)
    except ExecutorError as exc:
        assert str(exc).startswith("--executor ") and "\n" not in str(exc)
    else:
        assert got.label in {"local", text}


def test_without_ray_installed_the_error_is_one_line_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as when not installed
    with pytest.raises(ExecutorError) as caught:
        parse_executor("ray://head:10001", 1)
    assert str(caught.value) == (
        "--executor ray://head:10001: Ray is not installed; pip install 'edgeflux[ray]'"
    )
    with pytest.raises(ExecutorError, match=r"pip install 'edgeflux\[ray\]'"):
        list(RayExecutor("head", 10001).run([{"id": "a.cal"}]))


def test_files_a_unit_reads_are_rebuilt_elsewhere_byte_for_byte(tmp_path: Path) -> None:
    ckpt = tmp_path / "wm"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    (ckpt / "sub" / "weights.bin").write_bytes(bytes(range(256)))
    graph = tmp_path / "policy.onnx"
    graph.write_bytes(b"\x08\x01onnx")
    for src in (ckpt, graph):
        rebuilt = Path(_unpack(_pack(src), tmp_path / "elsewhere" / src.name))
        assert rebuilt.name == src.name and rebuilt != src
        if src.is_dir():
            assert sorted(p.relative_to(rebuilt) for p in rebuilt.rglob("*")) == sorted(
                p.relative_to(src) for p in src.rglob("*")
            )
            assert (rebuilt / "sub" / "weights.bin").read_bytes() == bytes(range(256))
        else:
            assert rebuilt.read_bytes() == graph.read_bytes()
    hostile = {"name": "wm", "dir": True, "files": {"../../escape": b"x"}}
    with pytest.raises(campaign.CampaignError, match="not a relative path"):
        _unpack(hostile, tmp_path / "h")
    assert not (tmp_path / "escape").exists()
    with pytest.raises(campaign.CampaignError, match="neither a file nor a directory"):
        _pack(tmp_path / "missing.onnx")


def test_bad_executor_on_the_command_line_is_a_usage_error(tmp_path: Path, keys, make_bundle):
    from edgeflux.cli import root

    (tmp_path / "c.toml").write_text(CAMPAIGN)
    args = ["attest", "run", str(make_bundle()), "--campaign", str(tmp_path / "c.toml"),
            "--trust", str(keys.trust_dir), "--key", str(keys.attest_path),
            "--workdir", str(tmp_path / "work")]  # fmt: skip
    bad = CliRunner().invoke(root, [*args, "--executor", "ray:/head:1"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert "--executor 'ray:/head:1': expected 'local' or 'ray://HOST:PORT'" in bad.output
    assert not (tmp_path / "work").exists()
    on_plane = ["attest", "run", "--campaign", str(tmp_path / "c.toml"),
                "--remote", "pendulum@1.0.0", "--executor", "ray://h:1"]  # fmt: skip
    remote = CliRunner().invoke(root, on_plane)
    assert remote.exit_code == 2 and "the plane runs --remote campaigns" in remote.output
    if _has_ray():
        port = free_port()  # nothing listens there
        dead = CliRunner().invoke(root, [*args, "--executor", f"ray://127.0.0.1:{port}"])
        assert dead.exit_code == 1 and "Traceback" not in dead.output
        assert f"ray://127.0.0.1:{port}: no Ray client server answers" in dead.output


# ----------------------------------------------------------------------------- a real cluster


@dataclass
class Cluster:
    host: str
    port: int  # the head's Ray client server
    address: str
    die_dir: Path
    start_s: float


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """A head and one worker node, one CPU each, on loopback."""
    die_dir = tmp_path_factory.mktemp("die")
    with run_ray_cluster(nodes=2, cpus_per_node=1, env={DIE_ENV: str(die_dir)}) as c:
        yield Cluster(c.host, c.port, c.address, die_dir, c.start_s)


def _clock() -> Callable[[], datetime]:
    """A clock that ticks one second per reading, from the same start for every run."""
    ticks = iter(range(1_000))
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return lambda: start + timedelta(seconds=next(ticks))


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> dict[str, Any]:
    """The reference: the same campaign on the local process pool (two spawn workers)."""
    from runtime.bundle import create_bundle, generate_signing_key, sign_bundle
    from runtime.trust import TrustStore
    from tests.attest.conftest import energy_pendulum_policy, pendulum_manifest

    tmp = tmp_path_factory.mktemp("local")
    generate_signing_key(tmp / "s.pem", tmp / "s.pub")
    trust = TrustStore(tmp / "trust")
    trust.add("models", (tmp / "s.pub").read_bytes())
    from cloud.attest.statement import generate_key

    key = generate_key(tmp / "attest.key")
    trust.add("attestation", key.public_pem())
    bundle = create_bundle(energy_pendulum_policy(tmp / "e.onnx"), pendulum_manifest(), tmp / "b")
    sign_bundle(bundle, tmp / "s.pem")
    (tmp / "campaign.toml").write_text(CAMPAIGN)
    spec = campaign.parse_campaign(CAMPAIGN)
    t0 = time.monotonic()
    result = campaign.run_campaign(
        bundle, spec, workdir=tmp / "work", trust_dir=tmp / "trust", key=key, clock=_clock()
    )
    return {
        "tmp": tmp, "bundle": bundle, "spec": spec, "key": key, "result": result,
        "wall_s": time.monotonic() - t0,
    }  # fmt: skip


def test_the_cli_on_a_ray_cluster_signs_the_same_results_as_the_local_pool(
    cluster: Cluster, local_run: dict[str, Any], tmp_path: Path
) -> None:
    from edgeflux.cli import root

    tmp = local_run["tmp"]
    t0 = time.monotonic()
    got = CliRunner().invoke(
        root,
        ["attest", "run", str(local_run["bundle"]), "--campaign", str(tmp / "campaign.toml"),
         "--trust", str(tmp / "trust"), "--key", str(tmp / "attest.key"),
         "--workdir", str(tmp_path / "work"), "--executor", cluster.address, "--json"],
    )  # fmt: skip
    ray_s = time.monotonic() - t0
    assert got.exit_code == 0, got.output
    print(f"\ncluster start {cluster.start_s:.1f} s; campaign local {local_run['wall_s']:.1f} s, "
          f"ray {ray_s:.1f} s (CLI); load {os.getloadavg()[0]:.2f}")  # fmt: skip
    summary = json.loads(got.stdout)
    local = local_run["result"]
    assert summary["verdict"] == local.verdict == "attested"
    # Every per-unit result, byte for byte: each episode's seed, return, length.
    ours, theirs = _units(tmp_path / "work"), _units(tmp / "work")
    assert list(ours) == ["nominal.0000.json", "nominal.0001.json", "nominal.0002.json",
                          "nominal.0003.json", "nominal.cal.json"]  # fmt: skip
    assert ours == theirs
    # The signed statement: identical but for when it was made.
    from runtime.trust import TrustStore

    raw = (tmp_path / "work" / "attestation.dsse.json").read_bytes()
    signed = verify_envelope(raw, TrustStore(tmp / "trust").public_keys("attestation"))
    assert not _differences(_timeless(signed.statement), _timeless(local.statement))
    state = json.loads((tmp_path / "work" / "state.json").read_text())
    local_state = json.loads((tmp / "work" / "state.json").read_text())
    assert not _differences(_timeless(state), _timeless(local_state))


def test_a_ray_campaign_stopped_midway_resumes_to_the_same_results(
    cluster: Cluster, local_run: dict[str, Any], tmp_path: Path
) -> None:
    seen: list[tuple[int, str]] = []
    clock = _clock()  # the resumed run goes on reading the interrupted run's clock

    def stop_after_two(done: int, total: int, stage: str) -> None:
        seen.append((done, stage))
        if stage == "evaluation" and done >= 3:  # the calibration unit and two evaluation units
            raise KeyboardInterrupt

    args = (local_run["bundle"], local_run["spec"])
    kw = {"workdir": tmp_path / "work", "trust_dir": local_run["tmp"] / "trust",
          "key": local_run["key"]}  # fmt: skip
    with RayExecutor(cluster.host, cluster.port) as ex, pytest.raises(KeyboardInterrupt):
        campaign.run_campaign(*args, executor=ex, progress=stop_after_two, clock=clock, **kw)
    kept = _units(tmp_path / "work")
    assert 3 <= len(kept) < 5 and "nominal.cal.json" in kept
    assert not (tmp_path / "work" / "attestation.dsse.json").exists()

    progress: list[tuple[int, int, str]] = []
    with RayExecutor(cluster.host, cluster.port, max_in_flight=2) as ex:  # the rest queued
        resumed = campaign.run_campaign(
            *args,
            executor=ex,
            progress=lambda d, t, s: progress.append((d, t, s)),
            clock=clock,
            **kw,
        )
    assert _units(tmp_path / "work") == _units(local_run["tmp"] / "work")
    assert {k: kept[k] for k in kept} == {k: _units(tmp_path / "work")[k] for k in kept}
    assert resumed.statement == local_run["result"].statement  # same clock readings too
    # Progress counted the saved units first, then each unit as it finished.
    evaluation = [d for d, _, s in progress if s == "evaluation"]
    assert evaluation == list(range(len(kept), 6)) and progress[-1][2] == "numeric parity"


def dies_once_teacher(env_id: str, variant: object) -> Any:
    """The energy teacher, after killing the first Ray worker process that builds it."""
    die = os.environ.get(DIE_ENV)
    if die is not None:
        marker = Path(die) / "died-once"
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            pass
        else:
            os._exit(1)
    from tests.attest.conftest import EnergyTeacher

    return EnergyTeacher()


def dies_always_teacher(env_id: str, variant: object) -> Any:
    """Kills every Ray worker process that builds it (and nothing outside the cluster)."""
    if os.environ.get(DIE_ENV) is not None:
        os._exit(1)
    from tests.attest.conftest import EnergyTeacher

    return EnergyTeacher()


def test_a_dead_ray_worker_is_retried_then_named(
    cluster: Cluster, local_run: dict[str, Any], tmp_path: Path
) -> None:
    kw = {"trust_dir": local_run["tmp"] / "trust", "key": local_run["key"]}
    once = campaign.parse_campaign(
        CAMPAIGN.replace("conftest:energy_teacher", "test_ray_executor:dies_once_teacher")
    )
    with RayExecutor(cluster.host, cluster.port) as ex:
        result = campaign.run_campaign(
            local_run["bundle"], once, workdir=tmp_path / "once", executor=ex, **kw
        )
    assert (cluster.die_dir / "died-once").exists()  # a worker did die, and the unit reran
    assert result.verdict == "attested"
    assert _episodes(tmp_path / "once") == _episodes(local_run["tmp"] / "work")

    always = campaign.parse_campaign(
        CAMPAIGN.replace("conftest:energy_teacher", "test_ray_executor:dies_always_teacher")
    )
    with (
        RayExecutor(cluster.host, cluster.port, max_retries=0) as ex,
        pytest.raises(campaign.CampaignError) as caught,
    ):
        campaign.run_campaign(
            local_run["bundle"], always, workdir=tmp_path / "always", executor=ex, **kw
        )
    message = str(caught.value)
    assert message.startswith("work unit nominal.cal: its Ray worker died (1 try;")
    assert "rerun to resume" in message and "\n" not in message


# ----------------------------------------------------------------------------- shipped files


class _HiddenFiles:
    """An executor whose units run where the driver's files are out of reach: each unit's
    files are packed as the Ray executor packs them, then `hide` is moved away while
    the unit runs from the shipped copies alone (`run_shipped`, as on a Ray node)."""

    label = "elsewhere"

    def __init__(self, hide: list[Path]) -> None:
        self.hide = hide
        self.shipped: set[str] = set()

    def __enter__(self) -> _HiddenFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, units: Any) -> Iterator[dict[str, Any]]:
        from cloud.attest.executors import _get, run_shipped
        from cloud.attest.units import FILE_FIELDS
        from edgeflux._version import __version__

        for u in units:
            fields = [f for f in FILE_FIELDS if _get(u, f) is not None]
            packs = [_pack(Path(_get(u, f))) for f in fields]
            self.shipped.update(str(_get(u, f)) for f in fields)
            for p in self.hide:
                p.rename(p.with_name(p.name + ".away"))
            try:
                result = run_shipped(u, [list(f) for f in fields], __version__, *packs)
            finally:
                for p in self.hide:
                    p.with_name(p.name + ".away").rename(p)
            yield result


@pytest.mark.parametrize("reference", ["world-model-dir", "against-bundle"])
def test_units_run_from_shipped_files_alone_with_the_same_results(
    tmp_path: Path, keys, make_bundle, reference: str
) -> None:
    from tests.attest.conftest import energy_pendulum_policy, pendulum_manifest
    from tests.attest.test_reference import TINY, _world_model_bundle

    spec = campaign.parse_campaign(TINY)
    kw: dict[str, Any] = {"trust_dir": keys.trust_dir, "key": keys.attest}
    if reference == "world-model-dir":
        bundle, _ = _world_model_bundle(tmp_path, make_bundle, tmp_path / "ckpt", saved_dir=True)
        spec = spec.model_copy(update={"teacher_search": [str(tmp_path / "ckpt")]})
        hide = [bundle, tmp_path / "ckpt"]
        wanted = {str(bundle / "policy.onnx"), str(tmp_path / "ckpt" / "world_model")}
    else:
        bundle = make_bundle(energy_pendulum_policy(tmp_path / "new.onnx"))
        old = make_bundle(energy_pendulum_policy(tmp_path / "old.onnx", kp=10.3),
                          manifest=pendulum_manifest(max_action_delta=1.5))  # fmt: skip
        kw["against"] = old
        hide = [bundle, old]
        wanted = {str(bundle / "policy.onnx"), str(old / "policy.onnx")}
    campaign.run_campaign(bundle, spec, workdir=tmp_path / "here", **kw)
    elsewhere = _HiddenFiles(hide)
    campaign.run_campaign(bundle, spec, workdir=tmp_path / "there", executor=elsewhere, **kw)
    assert elsewhere.shipped == wanted
    assert _units(tmp_path / "there") == _units(tmp_path / "here")
