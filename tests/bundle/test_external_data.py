"""Bundles whose policy keeps its weights in ONNX external-data files."""

from __future__ import annotations

import os
import re
import resource
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper

from runtime.bundle import (
    BundleDigestError,
    BundleFileSetError,
    BundleOnnxError,
    DeviceProfile,
    create_bundle,
    sign_bundle,
    verify_bundle,
)
from runtime.bundle._onnxwire import ExternalRef, OnnxInfo
from runtime.bundle.onnx_checks import check_external_data
from runtime.session import PolicySession
from runtime.trust import TrustStore
from tests.bundle.conftest import Keys, force_sign, make_manifest, snapshot


def _external(name: str, shape: tuple[int, ...], location: str, offset: int) -> TensorProto:
    t = TensorProto()
    t.name = name
    t.data_type = TensorProto.FLOAT
    t.dims.extend(shape)
    t.data_location = TensorProto.EXTERNAL
    nbytes = int(np.prod(shape)) * 4
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(nbytes))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def make_external_policy(src: Path, seed: int = 0) -> tuple[Path, list[np.ndarray]]:
    """tanh(obs @ W1) @ W2 + b with W1 in weights/a.bin and (b, W2) side by side in b.bin."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((3, 8)).astype(np.float32)
    w2 = rng.standard_normal((8, 2)).astype(np.float32)
    b = rng.standard_normal(2).astype(np.float32)
    (src / "weights").mkdir(parents=True)
    (src / "weights" / "a.bin").write_bytes(w1.tobytes())
    (src / "b.bin").write_bytes(b.tobytes() + w2.tobytes())
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["obs", "W1"], ["h"]),
            helper.make_node("Tanh", ["h"], ["t"]),
            helper.make_node("MatMul", ["t", "W2"], ["m"]),
            helper.make_node("Add", ["m", "b"], ["action"]),
        ],
        "policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", 2])],
        initializer=[
            _external("W1", (3, 8), "weights/a.bin", 0),
            _external("b", (2,), "b.bin", 0),
            _external("W2", (8, 2), "b.bin", 8),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = src / "policy.onnx"
    path.write_bytes(model.SerializeToString())
    return path, [w1, w2, b]


@pytest.fixture
def ext_bundle(tmp_path: Path, keys: Keys) -> tuple[Path, list[np.ndarray]]:
    policy, weights = make_external_policy(tmp_path / "src")
    bdir = create_bundle(policy, make_manifest(), tmp_path / "ext-bundle")
    sign_bundle(bdir, keys.private)
    return bdir, weights


def test_external_data_bundle_verifies_loads_in_onnxruntime_and_runs(
    ext_bundle: tuple[Path, list[np.ndarray]], trust: TrustStore, device: DeviceProfile
) -> None:
    bdir, (w1, w2, b) = ext_bundle
    verified = verify_bundle(bdir, trust, device=device)
    assert sorted(verified.files) == ["b.bin", "edgeflux.json", "policy.onnx", "weights/a.bin"]
    assert verified.external_data == ("b.bin", "weights/a.bin")
    session = PolicySession(verified.path / "policy.onnx")
    obs = np.array([[0.1, -0.4, 0.7]], np.float32)
    expected = np.tanh(obs @ w1) @ w2 + b
    np.testing.assert_allclose(session.run(obs), expected, rtol=1e-5, atol=1e-6)


def test_runtime_service_loads_an_external_data_policy_from_the_verified_directory(
    ext_bundle: tuple[Path, list[np.ndarray]], trust: TrustStore, device: DeviceProfile
) -> None:
    import shutil
    import tempfile

    from runtime.config import RuntimeConfig
    from runtime.layout import RobotLayout
    from runtime.service import RuntimeService

    bdir, (w1, w2, b) = ext_bundle
    root = Path(tempfile.mkdtemp(prefix="efx-", dir="/tmp"))
    try:
        layout = RobotLayout.at(root)
        layout.ensure()
        svc = RuntimeService(layout, RuntimeConfig(adapter="null"), device=device, serve=False)
        loaded = svc.load(verify_bundle(bdir, trust, device=device), None)
        obs = np.array([0.3, 0.2, -0.9], np.float32)
        expected = (np.tanh(obs[None] @ w1) @ w2 + b)[0]
        np.testing.assert_allclose(loaded.session.step(obs), expected, rtol=1e-5, atol=1e-6)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _set_entry(bdir: Path, tensor: str, key: str, value: str) -> None:
    model = onnx.load(bdir / "policy.onnx", load_external_data=False)
    t = next(i for i in model.graph.initializer if i.name == tensor)
    next(e for e in t.external_data if e.key == key).value = value
    (bdir / "policy.onnx").write_bytes(model.SerializeToString())


def _tamper(bdir: Path) -> None:
    data = bytearray((bdir / "weights" / "a.bin").read_bytes())
    data[5] ^= 0x01
    (bdir / "weights" / "a.bin").write_bytes(bytes(data))


def _truncate_resigned(bdir: Path, private: Path) -> None:
    with open(bdir / "b.bin", "r+b") as fh:
        fh.truncate(40)
    force_sign(bdir, private)


CASES = {
    "tampered": (lambda b, k: _tamper(b), BundleDigestError, "weights/a.bin has sha256"),
    "missing": (
        lambda b, k: (b / "b.bin").unlink(),
        BundleFileSetError,
        "signed files ['b.bin'] are missing",
    ),
    "extra": (
        lambda b, k: (b / "weights" / "c.bin").write_bytes(b"\0" * 8),
        BundleFileSetError,
        "['weights/c.bin'] are not covered by the signature",
    ),
    "escaping": (
        lambda b, k: (_set_entry(b, "W1", "location", "../a.bin"), force_sign(b, k)),
        BundleOnnxError,
        "tensor 'W1' keeps its data in external file '../a.bin': locations with '..' are refused",
    ),
    "absolute": (
        lambda b, k: (_set_entry(b, "W1", "location", "/etc/passwd"), force_sign(b, k)),
        BundleOnnxError,
        "absolute or empty locations are refused",
    ),
    "own-file": (
        lambda b, k: (_set_entry(b, "b", "location", "edgeflux.json"), force_sign(b, k)),
        BundleOnnxError,
        "'edgeflux.json': that is one of the bundle's own files",
    ),
    "unsigned-location": (
        lambda b, k: (_set_entry(b, "W1", "location", "weights/z.bin"), force_sign(b, k)),
        BundleOnnxError,
        "'weights/z.bin': that file is not part of the signed bundle",
    ),
    "file-too-short": (
        lambda b, k: _truncate_resigned(b, k),
        BundleOnnxError,
        "tensor 'W2' keeps its data in external file 'b.bin': bytes 8..72 run past the "
        "file's 40 bytes",
    ),
    "length-mismatch": (
        lambda b, k: (_set_entry(b, "W2", "length", "60"), force_sign(b, k)),
        BundleOnnxError,
        "'b.bin': 60 bytes are stored, its dtype and dims need 64",
    ),
    "bad-offset": (
        lambda b, k: (_set_entry(b, "W2", "offset", "-8"), force_sign(b, k)),
        BundleOnnxError,
        "external_data offset '-8' is not a non-negative integer",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_external_data_is_refused_with_a_specific_reason_and_nothing_changes(
    ext_bundle: tuple[Path, list[np.ndarray]],
    trust: TrustStore,
    keys: Keys,
    device: DeviceProfile,
    case: str,
) -> None:
    bdir, _ = ext_bundle
    mutate, error, fragment = CASES[case]
    mutate(bdir, keys.private)
    before = snapshot(bdir)
    with pytest.raises(error, match=re.escape(fragment)):
        verify_bundle(bdir, trust, device=device)
    assert snapshot(bdir) == before


def test_signing_refuses_a_policy_whose_external_data_overruns_its_file(
    ext_bundle: tuple[Path, list[np.ndarray]], keys: Keys
) -> None:
    bdir, _ = ext_bundle
    sig_before = (bdir / "model.sig").read_bytes()
    with open(bdir / "b.bin", "r+b") as fh:
        fh.truncate(40)
    with pytest.raises(BundleOnnxError, match=r"bytes 8\.\.72 run past the file's 40 bytes"):
        sign_bundle(bdir, keys.private)
    assert (bdir / "model.sig").read_bytes() == sig_before


def test_create_refuses_a_missing_external_file_and_writes_nothing(tmp_path: Path) -> None:
    policy, _ = make_external_policy(tmp_path / "src")
    (tmp_path / "src" / "b.bin").unlink()
    with pytest.raises(BundleOnnxError, match=r"b\.bin: external data file unusable"):
        create_bundle(policy, make_manifest(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


@given(
    size=st.integers(0, 1 << 40),
    offset=st.integers(0, 1 << 41),
    length=st.one_of(st.none(), st.integers(0, 1 << 41)),
    nbytes=st.integers(0, 1 << 40),
)
def test_range_check_accepts_exactly_the_ranges_inside_the_file(
    size: int, offset: int, length: int | None, nbytes: int
) -> None:
    info = OnnxInfo(external=[ExternalRef("w", "w.bin", offset, length, nbytes)])
    span = length if length is not None else size - offset
    ok = offset <= size and offset + span <= size and span == nbytes
    try:
        check_external_data(info, Path("/nonexistent/policy.onnx"), {"w.bin": size})
    except BundleOnnxError:
        assert not ok
    else:
        assert ok


# ----------------------------------------------------------------- large bundles


def make_sparse_external_bundle(bdir: Path, file_bytes: list[int]) -> list[np.ndarray]:
    """A bundle (unsigned) of one (rows, 4) float32 tensor per file; only row 0 is written,
    the rest is a hole. The policy is obs + sum_i W_i[0]."""
    bdir.mkdir(parents=True)
    rows_list = []
    inits, nodes, last = [], [], "obs"
    # The row index is computed from the observation (always 0), so no optimizer can
    # fold the lookups into constants: onnxruntime keeps the weights where they are.
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    nodes += [
        helper.make_node("Mul", ["obs", "zero"], ["z"]),
        helper.make_node("ReduceSum", ["z"], ["zsum"], keepdims=0),
        helper.make_node("Cast", ["zsum"], ["idx"], to=TensorProto.INT64),
    ]
    for i, nbytes in enumerate(file_bytes):
        rows = nbytes // 16
        row0 = np.full(4, i + 1, np.float32) * np.float32(0.25)
        with open(bdir / f"w{i}.bin", "wb") as fh:
            fh.write(row0.tobytes())
            fh.truncate(rows * 16)
        rows_list.append(row0)
        inits.append(_external(f"W{i}", (rows, 4), f"w{i}.bin", 0))
        nodes.append(helper.make_node("Gather", [f"W{i}", "idx"], [f"r{i}"], axis=0))
        out = "action" if i == len(file_bytes) - 1 else f"s{i}"
        nodes.append(helper.make_node("Add", [last, f"r{i}"], [out]))
        last = out
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", 4])],
        initializer=[*inits, zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (bdir / "policy.onnx").write_bytes(model.SerializeToString())
    (bdir / "edgeflux.json").write_text(make_manifest(obs_dim=4, act_dim=4).to_json())
    return rows_list


def _verify_peak(tmp: Path, total: int, keys: Keys, trust: TrustStore) -> int:
    bdir = tmp / f"b{total}"
    make_sparse_external_bundle(bdir, [total // 2, total // 2])
    sign_bundle(bdir, keys.private)
    tracemalloc.start()
    try:
        verify_bundle(bdir, trust)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_verification_peak_memory_does_not_grow_with_bundle_size(
    tmp_path: Path, keys: Keys, trust: TrustStore
) -> None:
    small = _verify_peak(tmp_path, 4 << 20, keys, trust)
    large = _verify_peak(tmp_path, 128 << 20, keys, trust)
    assert large - small < 256 << 10, (small, large)
    assert large < 4 << 20  # one 1 MiB read buffer plus metadata, never the file


@pytest.mark.slow
def test_a_2_5_gb_external_data_bundle_verifies_and_loads(
    tmp_path: Path, keys: Keys, trust: TrustStore, device: DeviceProfile
) -> None:
    gb = 1 << 30
    sizes = [gb, gb, gb // 2]  # 2.5 GiB in three weight files, mostly holes
    rows = make_sparse_external_bundle(tmp_path / "big", sizes)
    sign_bundle(tmp_path / "big", keys.private)
    verified = verify_bundle(tmp_path / "big", trust, device=device)
    assert sum(os.stat(tmp_path / "big" / n).st_size for n in verified.external_data) == sum(sizes)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    session = PolicySession(verified.path / "policy.onnx")
    obs = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    np.testing.assert_allclose(session.run(obs), obs + sum(rows))
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    print(f"peak RSS growth loading a 2.5 GiB external-data policy: {grown / 2**20:.0f} MiB")
    # Loaded by path, onnxruntime maps the weight files instead of copying them.
    assert grown < 256 << 20


def test_inspect_lists_every_weight_file_with_its_size(
    ext_bundle: tuple[Path, list[np.ndarray]], trust: TrustStore
) -> None:
    import json

    from tests.bundle.test_cli_bundle import ok

    bdir, _ = ext_bundle
    report = json.loads(ok("inspect", bdir, "--trust-dir", trust.directory, "--json").stdout)
    assert report["verified"] is True
    expected = {n: (bdir / n).stat().st_size for n in report["files"]}
    assert report["sizes"] == expected and set(expected) >= {"weights/a.bin", "b.bin"}
    assert report["sizes"]["b.bin"] == 72 and report["total_bytes"] == sum(expected.values())
    table = ok("inspect", bdir).stdout
    assert "weights/a.bin" in table and "96 B" in table and "72 B" in table


def test_inspect_of_an_archive_counts_its_chunks(
    ext_bundle: tuple[Path, list[np.ndarray]], tmp_path: Path
) -> None:
    import json

    from runtime.bundle import pack_bundle
    from tests.bundle.test_cli_bundle import ok

    bdir, _ = ext_bundle
    efb = pack_bundle(bdir, tmp_path / "ext.efb")
    report = json.loads(ok("inspect", efb, "--json").stdout)
    assert report["chunks"] == {"count": 1, "archive_bytes": efb.stat().st_size}
    assert "chunks" not in json.loads(ok("inspect", bdir, "--json").stdout)
    assert "chunks" in ok("inspect", efb).stdout
