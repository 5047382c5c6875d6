"""Property tests of two more untrusted readers: the manifest parser and the bundle
archive reader answer every input with their own error type (or a valid result), and
a refused archive leaves nothing behind. Small budget by default, large under slow."""

from __future__ import annotations

import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.bundle.archive import unpack_bundle
from runtime.bundle.errors import BundleArchiveError
from runtime.manifest import BundleManifest, ManifestError, parse_manifest
from tests.budgets import slow_budget
from tests.bundle.conftest import make_manifest

SMALL = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
LARGE = settings(
    max_examples=slow_budget(full=2000, ci=200),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

VALID: dict[str, Any] = json.loads(make_manifest().model_dump_json())
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def manifests(draw: st.DrawFn) -> bytes:
    """A valid manifest with fields dropped or replaced, nested too; or raw bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=300))
    doc = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 4))):
        target = doc
        while isinstance(target, dict) and target and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(target)))
            if not isinstance(target[key], dict):
                break
            target = target[key]
        if not isinstance(target, dict) or not target:
            continue
        key = draw(st.sampled_from(sorted(target)))
        if draw(st.booleans()):
            del target[key]
        else:
            target[key] = draw(json_values)
    return json.dumps(doc).encode()


def _manifest_property(raw: bytes) -> None:
    try:
        m = parse_manifest(raw, "fuzz/manifest.json")
    except ManifestError as exc:
        assert "fuzz/manifest.json" in str(exc)
        return
    assert isinstance(m, BundleManifest)


@SMALL
@given(manifests())
def test_manifest_parser_raises_only_manifest_errors(raw: bytes) -> None:
    _manifest_property(raw)


@pytest.mark.slow
@LARGE
@given(manifests())
def test_manifest_parser_raises_only_manifest_errors_large(raw: bytes) -> None:
    _manifest_property(raw)


def _archive_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "b"
        d.mkdir()
        (d / "manifest.json").write_text(json.dumps(VALID))
        (d / "policy.onnx").write_bytes(b"\x08\x07" * 40)
        efb = Path(tmp) / "b.efb"
        with tarfile.open(efb, "w:gz") as tar:
            tar.add(d, arcname=".")
        return efb.read_bytes()


ARCHIVE = _archive_bytes()


@st.composite
def archives(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=600))
    data = bytearray(ARCHIVE[: draw(st.integers(1, len(ARCHIVE)))])
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def _archive_property(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        efb, staging = Path(tmp) / "x.efb", Path(tmp) / "staging"
        efb.write_bytes(data)
        try:
            out = unpack_bundle(efb, staging, max_members=16, max_total_bytes=1 << 20)
        except BundleArchiveError:
            assert not staging.exists(), "a refused archive must leave no staging directory"
            assert sorted(p.name for p in Path(tmp).iterdir()) == ["x.efb"]
            return
        assert out == staging and staging.is_dir()


@SMALL
@given(archives())
def test_archive_reader_raises_only_archive_errors(data: bytes) -> None:
    _archive_property(data)


@pytest.mark.slow
@LARGE
@given(archives())
def test_archive_reader_raises_only_archive_errors_large(data: bytes) -> None:
    _archive_property(data)
