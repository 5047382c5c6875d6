"""The .efb transport form: deterministic packing, hostile-archive extraction."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from runtime.bundle import BundleArchiveError, pack_bundle, unpack_bundle, verify_bundle
from runtime.trust import TrustStore
from tests.bundle.conftest import BundleFactory


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def assert_unpack_refused(efb: Path, tmp_path: Path, fragment: str, **caps: int) -> None:
    staging = tmp_path / "staging"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(BundleArchiveError, match=fragment):
        unpack_bundle(efb, staging, **caps)
    assert not staging.exists(), "a refused archive must leave no staging directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path.parent / "escaped").exists()


def test_pack_then_unpack_verifies_in_place(
    bundle: Path, trust: TrustStore, tmp_path: Path
) -> None:
    efb = pack_bundle(bundle, tmp_path / "b.efb")
    staging = unpack_bundle(efb, tmp_path / "staging")
    verified = verify_bundle(staging, trust)
    assert verified.path == staging
    assert verified.files["policy.onnx"] == verify_bundle(bundle, trust).policy_sha256


def test_pack_is_deterministic(bundle: Path, tmp_path: Path) -> None:
    a = pack_bundle(bundle, tmp_path / "a.efb").read_bytes()
    (bundle / "policy.onnx").touch()  # a new mtime must not change the archive
    b = pack_bundle(bundle, tmp_path / "b.efb").read_bytes()
    assert a == b


def test_pack_refuses_unsigned_bundle(make_bundle: BundleFactory, tmp_path: Path) -> None:
    with pytest.raises(BundleArchiveError, match="not signed"):
        pack_bundle(make_bundle(sign=False), tmp_path / "x.efb")
    assert not (tmp_path / "x.efb").exists()


def test_tar_with_dotdot_member_is_refused(tmp_path: Path) -> None:
    efb = _tar(tmp_path / "a.efb", [_file("policy.onnx"), _file("../escaped")])
    assert_unpack_refused(efb, tmp_path, r"'\.\./escaped' escapes the bundle")


def test_tar_with_absolute_member_is_refused(tmp_path: Path) -> None:
    efb = _tar(tmp_path / "a.efb", [_file("/tmp/escaped")])
    assert_unpack_refused(efb, tmp_path, "has an absolute path")


def test_tar_with_symlink_member_is_refused(tmp_path: Path) -> None:
    efb = _tar(tmp_path / "a.efb", [_special("policy.onnx", tarfile.SYMTYPE, "/etc/passwd")])
    assert_unpack_refused(efb, tmp_path, r"is a symlink \(to '/etc/passwd'\)")


def test_tar_with_hardlink_member_is_refused(tmp_path: Path) -> None:
    efb = _tar(
        tmp_path / "a.efb",
        [_file("policy.onnx"), _special("copy.onnx", tarfile.LNKTYPE, "policy.onnx")],
    )
    assert_unpack_refused(efb, tmp_path, "is a hard link")


def test_tar_with_device_file_is_refused(tmp_path: Path) -> None:
    efb = _tar(tmp_path / "a.efb", [_special("disk", tarfile.BLKTYPE)])
    assert_unpack_refused(efb, tmp_path, "is a device file")


def test_tar_with_fifo_is_refused(tmp_path: Path) -> None:
    efb = _tar(tmp_path / "a.efb", [_special("pipe", tarfile.FIFOTYPE)])
    assert_unpack_refused(efb, tmp_path, "device file or FIFO")


def test_tar_with_oversized_member_is_refused(tmp_path: Path) -> None:
    efb = _tar(tmp_path / "a.efb", [_file("policy.onnx", b"\x00" * 5000)])
    assert_unpack_refused(efb, tmp_path, "over the cap of 4096", max_total_bytes=4096)


def test_tar_with_too_many_members_is_refused(tmp_path: Path) -> None:
    efb = _tar(tmp_path / "a.efb", [_file(f"f{i}") for i in range(10)])
    assert_unpack_refused(efb, tmp_path, "more than 8 members", max_members=8)


def test_tar_with_duplicate_member_is_refused(tmp_path: Path) -> None:
    efb = _tar(tmp_path / "a.efb", [_file("policy.onnx", b"a"), _file("policy.onnx", b"b")])
    assert_unpack_refused(efb, tmp_path, "appears twice")


def test_compressed_or_garbage_archive_is_refused(tmp_path: Path) -> None:
    gz = tmp_path / "a.efb"
    with tarfile.open(gz, "w:gz") as tar:
        info, data = _file("policy.onnx")
        tar.addfile(info, io.BytesIO(data))
    assert_unpack_refused(gz, tmp_path, "not an uncompressed tar")


def test_empty_archive_is_refused(tmp_path: Path) -> None:
    efb = _tar(tmp_path / "a.efb", [])
    assert_unpack_refused(efb, tmp_path, "empty archive|not an uncompressed tar")


def test_unpack_into_existing_directory_is_refused(bundle: Path, tmp_path: Path) -> None:
    efb = pack_bundle(bundle, tmp_path / "b.efb")
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "keep.txt").write_text("mine")
    with pytest.raises(BundleArchiveError, match="already exists"):
        unpack_bundle(efb, tmp_path / "staging")
    assert [p.name for p in (tmp_path / "staging").iterdir()] == ["keep.txt"]


def test_archive_over_the_size_cap_is_refused_before_reading(tmp_path: Path) -> None:
    efb = _tar(tmp_path / "a.efb", [_file("policy.onnx", b"\x00" * 200_000)])
    assert_unpack_refused(efb, tmp_path, "exceeds the cap", max_total_bytes=1000)


def test_unpack_and_verify_returns_the_staging_dir_verified(
    bundle: Path, trust: TrustStore, tmp_path: Path
) -> None:
    from runtime.bundle import unpack_and_verify

    efb = pack_bundle(bundle, tmp_path / "b.efb")
    verified = unpack_and_verify(efb, tmp_path / "staging", trust)
    assert verified.path == tmp_path / "staging"
    assert (verified.path / "policy.onnx").is_file()


def test_unpack_and_verify_removes_staging_when_verification_fails(
    bundle: Path, tmp_path: Path
) -> None:
    from runtime.bundle import BundleSignatureError, unpack_and_verify

    efb = pack_bundle(bundle, tmp_path / "b.efb")
    with pytest.raises(BundleSignatureError, match="no model-signing keys"):
        unpack_and_verify(efb, tmp_path / "staging", TrustStore(tmp_path / "empty-trust"))
    assert not (tmp_path / "staging").exists()


def test_pack_refuses_to_write_the_archive_inside_the_bundle(bundle: Path) -> None:
    with pytest.raises(BundleArchiveError, match="would land inside the bundle"):
        pack_bundle(bundle, bundle / "self.efb")
    assert sorted(p.name for p in bundle.iterdir()) == ["edgeflux.json", "model.sig", "policy.onnx"]


def test_truncated_archive_is_refused_and_cleaned_up(bundle: Path, tmp_path: Path) -> None:
    efb = pack_bundle(bundle, tmp_path / "b.efb")
    data = efb.read_bytes()
    efb.write_bytes(data[: len(data) // 2])
    assert_unpack_refused(efb, tmp_path, "corrupt tar archive|cannot extract|unexpected end")
