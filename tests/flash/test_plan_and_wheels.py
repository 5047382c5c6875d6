"""Pure parts of flashing: the plan, target parsing, wheel compatibility."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeflux.provision import DirTarget, FlashError, ImageTarget, SshTarget, parse_target
from edgeflux.provision.wheels import WheelhouseError, check_wheelhouse, parse_python, wheel_fits


@pytest.mark.parametrize(
    ("name", "platform", "python", "ok"),
    [
        (
            "numpy-2.1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "linux_x86_64",
            "3.11",
            True,
        ),
        (
            "numpy-2.1.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
            "linux_x86_64",
            "3.11",
            False,
        ),
        ("numpy-2.1.0-cp312-cp312-manylinux_2_17_x86_64.whl", "linux_x86_64", "3.11", False),
        ("cryptography-44.0-cp39-abi3-manylinux_2_28_aarch64.whl", "linux_aarch64", "3.11", True),
        ("click-8.1.7-py3-none-any.whl", "linux_aarch64", "3.12", True),
        ("onnxruntime_gpu-1.20.0-cp310-cp310-linux_aarch64.whl", "linux_aarch64", "3.11", False),
        ("onnxruntime_gpu-1.20.0-cp311-cp311-linux_aarch64.whl", "linux_aarch64", "3.11", True),
    ],
)
def test_wheel_fits_platform_and_python(name: str, platform: str, python: str, ok: bool) -> None:
    assert (wheel_fits(name, platform, python) is None) is ok


def test_python_older_than_311_is_refused_with_a_hint() -> None:
    with pytest.raises(WheelhouseError, match=r"JetPack 6 ships 3.10"):
        parse_python("3.10")
    with pytest.raises(WheelhouseError, match=r"MAJOR\.MINOR"):
        parse_python("three")


def test_wheelhouse_for_the_wrong_platform_is_refused(tmp_path: Path) -> None:
    for name in (
        "edgeflux-0.1.0-py3-none-any.whl",
        "numpy-2.1.0-cp311-cp311-manylinux_2_17_aarch64.whl",
    ):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(WheelhouseError, match=r"numpy.*built for manylinux_2_17_aarch64"):
        check_wheelhouse(tmp_path, "linux_x86_64", "3.11")
    assert len(check_wheelhouse(tmp_path, "linux_aarch64", "3.11")) == 2


def test_wheelhouse_without_edgeflux_is_refused(tmp_path: Path) -> None:
    (tmp_path / "click-8.1.7-py3-none-any.whl").write_bytes(b"")
    with pytest.raises(WheelhouseError, match="no edgeflux wheel"):
        check_wheelhouse(tmp_path, "linux_x86_64", "3.11")


def test_parse_target_forms(tmp_path: Path) -> None:
    assert isinstance(parse_target(f"dir:{tmp_path}"), DirTarget)
    assert isinstance(parse_target(f"image:{tmp_path}/robot.tar"), ImageTarget)
    ssh = parse_target("ssh://root@10.0.0.5:2222/mnt/robot")
    assert isinstance(ssh, SshTarget) and ssh.description == "ssh://root@10.0.0.5:2222/mnt/robot"
    for bad in ("robot-1", "dir:", "image:robot.img", "ssh://host/x", "ftp://a@b/c"):
        with pytest.raises(FlashError, match="expected dir:PATH"):
            parse_target(bad)
